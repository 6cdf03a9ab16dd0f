// Tests of the .NET binding, compiled with Mono's mcs and run with mono
// against the release libgreylist.so (see tests/run.sh). Prints
// "N passed, M failed" and exits non-zero on any failure.

using System;
using System.IO;
using System.Net;
using System.Threading;
using Greylist;
using Greylist.Exchange;
using Microsoft.Exchange.Data.Transport;
using Microsoft.Exchange.Data.Transport.Smtp;

static class TestGreylist
{
    static int passed, failed;
    static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1700000000);

    static void Check(bool condition, string what)
    {
        if (!condition) throw new Exception("check failed: " + what);
    }

    static void Run(string name, System.Action test)
    {
        try
        {
            test();
            passed++;
            Console.WriteLine("test " + name + " ... ok");
        }
        catch (Exception e)
        {
            failed++;
            Console.WriteLine("test " + name + " ... FAILED: " + e);
        }
    }

    static T Throws<T>(System.Action action) where T : Exception
    {
        try { action(); }
        catch (T e) { return e; }
        throw new Exception("expected " + typeof(T).Name);
    }

    static int Main()
    {
        Run("cycle", () =>
        {
            using (var engine = new Engine())
            {
                var v = engine.Check("192.0.2.1", "alice@example.org", "bob@example.net", T0);
                Check(v.Action == VerdictAction.Defer && v.Reason == Reason.New && v.RetryAfter == 300, "new");
                Check(v.Reply == "450 4.2.0 Greylisted, please try again in 300 seconds", v.Reply);
                v = engine.Check("192.0.2.1", "alice@example.org", "bob@example.net", T0.AddSeconds(100));
                Check(v.Reason == Reason.EarlyRetry && v.RetryAfter == 200, "early retry");
                v = engine.Check("192.0.2.9", "Alice+x@example.org", "bob@example.net", T0.AddSeconds(300));
                Check(v.Action == VerdictAction.Pass && v.Reason == Reason.Retried && v.Delayed == 300 && v.Reply == null, "retried");
                Check(engine.Check("192.0.2.1", "alice@example.org", "bob@example.net", T0.AddDays(1)).Reason == Reason.Passed, "passed");
                Check(engine.Count == 1, "count");
                Check(engine.Sweep(T0.AddDays(400)) == 1 && engine.Count == 0, "sweep");
                Check(engine.Check("2001:db8::1", "", "bob@example.net").Reason == Reason.New, "system clock");
                Check(Engine.Version.Length >= 5, "version");
            }
        });

        Run("config", () =>
        {
            var config = new Config { Delay = 60, RetryWindow = 3600, AwlThreshold = 0, ReplyCode = 451, ReplyEnhanced = "4.7.1", GreylistText = "wait %s s" };
            using (var engine = new Engine(config))
                Check(engine.Check("192.0.2.1", "a@x.org", "b@y.net", T0).Reply == "451 4.7.1 wait 60 s", "reply");
            var e = Throws<GreylistException>(() => new Engine(new Config { Delay = 7200, RetryWindow = 3600 }));
            Check(e.Status == Status.InvalidArgument && e.Message.StartsWith("config: delay: "), e.Message);
            e = Throws<GreylistException>(() => new Engine(new Config { Ipv4Prefix = 40 }));
            Check(e.Message.Contains("ipv4_prefix"), e.Message);
            e = Throws<GreylistException>(() => new Engine(new Config { MaxClients = 0 }));
            Check(e.Message.Contains("max_clients"), e.Message);
            e = Throws<GreylistException>(() => new Engine(new Config { LostAfter = 0 }));
            Check(e.Message.Contains("lost_after"), e.Message);
        });

        Run("blast copies", () =>
        {
            // Issue 16: the third copy of one message sent at once blocks the /24.
            using (var engine = new Engine(new Config { BlastCopies = 1, BlockTime = 600 }))
            {
                for (int i = 0; i < 2; i++)
                    Check(engine.Check("203.0.113.9", "s@spam.example", "v@y.net", T0).Action == VerdictAction.Defer, "copy " + i);
                var v = engine.Check("203.0.113.9", "s@spam.example", "v@y.net", T0);
                Check(v.Action == VerdictAction.Block && v.Reason == Reason.Blocked && v.RetryAfter == 600, "blocked");
                Check(engine.Check("203.0.113.200", "x@y.example", "w@y.net", T0).Reason == Reason.Blocked, "whole network");
            }
        });

        // Issue 23: a pool's hosts in other networks share their verified host
        // names' registrable domain (KeyByHostName, on by default); Key says what
        // keyed each check.
        Run("host_name_keys", () =>
        {
            var first = new ClientInfo { ClientName = "mail-sor-f41.google.com" };
            var retry = new ClientInfo { ClientName = "mail-yw1-f5.google.com" };
            foreach (var on in new bool?[] { null, true, false })
            {
                using (var engine = new Engine(new Config { KeyByHostName = on }))
                {
                    var key = on == false ? KeyKind.Network : KeyKind.HostDomain;
                    var v = engine.Check("209.85.220.41", "alice@gmail.com", "bob@example.net", first, T0);
                    Check(v.Action == VerdictAction.Defer && v.Reason == Reason.New && v.Key == key, "first " + on + ": " + v.Reason + " " + v.Key);
                    v = engine.Check("74.125.0.5", "alice@gmail.com", "bob@example.net", retry, T0.AddSeconds(301));
                    if (on == false)
                        Check(v.Action == VerdictAction.Defer && v.Reason == Reason.New && v.Key == KeyKind.Network, "off: " + v.Reason + " " + v.Key);
                    else
                        Check(v.Action == VerdictAction.Pass && v.Reason == Reason.Retried && v.Delayed == 301 && v.Key == KeyKind.HostDomain,
                            "retry " + on + ": " + v.Reason + " " + v.Key);
                }
            }
            using (var engine = new Engine(new Config { KeyByVerifiedDomain = true }))
            {
                // A bare triplet, a generic host name and no information: the network.
                Check(engine.Check("203.0.113.7", "a@x.org", "b@y.net", T0).Key == KeyKind.Network, "bare triplet");
                var dsl = new ClientInfo { ClientName = "host-203-0-113-7.dsl.example.net" };
                Check(engine.Check("203.0.113.7", "a@x.org", "c@y.net", dsl, T0).Key == KeyKind.Network, "generic name");
                Check(engine.Check("203.0.113.7", "a@x.org", "d@y.net", (ClientInfo)null, T0).Key == KeyKind.Network, "no client info");
                // (null as the fourth argument still means the clock, as before.)
                Check(engine.Check("203.0.113.7", "a@x.org", "e@y.net", null).Reason == Reason.New, "null now");
                var spf = new ClientInfo { VerifiedDomain = "example.com", Helo = "mx.example.com" };
                var v = engine.Check("198.51.100.7", "alice@example.com", "b@y.net", spf, T0);
                Check(v.Reason == Reason.New && v.Key == KeyKind.VerifiedDomain, "verified domain: " + v.Key);
                v = engine.Check("192.0.2.99", "alice@example.com", "b@y.net", spf, T0.AddSeconds(300));
                Check(v.Reason == Reason.Retried && v.Key == KeyKind.VerifiedDomain, "verified domain retry: " + v.Reason);
                var e = Throws<GreylistException>(() => engine.Check("not-an-ip", "a@x.org", "b@y.net", first, T0));
                Check(e.Status == Status.InvalidArgument && e.Message.StartsWith("client_ip: "), e.Message);
                e = Throws<GreylistException>(() => engine.Check("192.0.2.1", "a@x.org", null, first, T0));
                Check(e.Status == Status.NullArgument && e.Message == "recipient: is NULL", e.Message);
            }
        });

        Run("redis", () =>
        {
            var secret = System.IO.Path.GetTempFileName();
            System.IO.File.WriteAllText(secret, "00112233445566778899aabbccddeeff\n");
            try
            {
                var e = Throws<GreylistException>(() => new Engine(new Config { Redis = "redis://127.0.0.1:1/0" }));
                Check(e.Status == Status.InvalidArgument && e.Message.Contains("shared_secret"), e.Message);
                e = Throws<GreylistException>(() => new Engine(new Config { Redis = "http://x/", RedisSecretFile = secret }));
                Check(e.Message.Contains("redis"), e.Message);
                // Nothing listens on port 1: the local table answers.
                using (var engine = new Engine(new Config { Redis = "redis://127.0.0.1:1/0", RedisSecretFile = secret }))
                {
                    var v = engine.Check("192.0.2.1", "a@example.org", "b@example.net", T0);
                    Check(v.Action == VerdictAction.Pass && v.Reason == Reason.StoreUnavailable && v.Reply == null, "fail open");
                }
                using (var engine = new Engine(new Config { Redis = "redis://127.0.0.1:1/0", RedisSecretFile = secret, RedisFailDefer = true }))
                {
                    var v = engine.Check("192.0.2.1", "a@example.org", "b@example.net", T0);
                    Check(v.Action == VerdictAction.Defer && v.Reason == Reason.StoreUnavailable, "defer");
                    Check(v.Reply == "450 4.2.0 Greylisted, please try again in 300 seconds", v.Reply);
                }
                var url = Environment.GetEnvironmentVariable("GREYLIST_TEST_REDIS_URL");
                if (url == null)
                {
                    if (Environment.GetEnvironmentVariable("CI") == "true")
                        throw new Exception("GREYLIST_TEST_REDIS_URL is not set; required under CI=true");
                    Console.WriteLine("  (no GREYLIST_TEST_REDIS_URL: the shared-store part is skipped)");
                    return;
                }
                var config = new Config { Redis = url, RedisSecretFile = secret, RedisPrefix = "dotnet:" };
                var rcpt = "net-" + System.Diagnostics.Process.GetCurrentProcess().Id + "@example.net";
                using (var mx1 = new Engine(config))
                using (var mx2 = new Engine(config))
                {
                    Check(mx1.Check("192.0.2.1", "a@example.org", rcpt, T0).Reason == Reason.New, "new at MX 1");
                    var v = mx2.Check("192.0.2.1", "a@example.org", rcpt, T0.AddSeconds(301));
                    Check(v.Reason == Reason.Retried && v.Delayed == 301, "retried at MX 2");
                }
            }
            finally
            {
                System.IO.File.Delete(secret);
            }
        });

        Run("bad_input", () =>
        {
            using (var engine = new Engine())
            {
                var e = Throws<GreylistException>(() => engine.Check("999.0.0.1", "a@x.org", "b@y.net", T0));
                Check(e.Status == Status.InvalidArgument && e.Message.StartsWith("client_ip: not an IP address"), e.Message);
                e = Throws<GreylistException>(() => engine.Check("192.0.2.1", null, "b@y.net", T0));
                Check(e.Status == Status.NullArgument && e.Message == "sender: is NULL", e.Message);
                e = Throws<GreylistException>(() => engine.Check("192.0.2.1", "a\0b@x.org", "b@y.net", T0));
                Check(e.Message == "sender: contains a NUL character", e.Message);
                e = Throws<GreylistException>(() => engine.SetList(ListKind.Clients, new[] { "10.0.0.0/8", "not a client" }));
                Check(e.Message.StartsWith("line 2: "), e.Message);
                Check(engine.Count == 0, "nothing recorded");
                // Legal in SMTP, only long: greylisted, keyed by its bytes (issue 15).
                var v = engine.Check("192.0.2.1", "a@x.org", new string('x', 65536), T0);
                Check(v.Action == VerdictAction.Defer && v.Reason == Reason.New, v.Reason.ToString());
                Check(engine.Count == 1, "the long recipient is one triplet");
            }
        });

        Run("dispose", () =>
        {
            var engine = new Engine();
            engine.Dispose();
            engine.Dispose();
            Throws<ObjectDisposedException>(() => engine.Check("192.0.2.1", "a@x.org", "b@y.net", T0));
            Throws<ObjectDisposedException>(() => { var n = engine.Count; });
        });

        Run("lists_and_snapshots", () =>
        {
            var dir = Path.Combine(Path.GetTempPath(), "greylist-dotnet-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(dir);
            try
            {
                using (var engine = new Engine())
                {
                    engine.SetList(ListKind.Clients, new[] { "10.0.0.0/8", ".google.com" });
                    Check(engine.Check("10.1.2.3", "a@x.org", "b@y.net", T0).Reason == Reason.Whitelisted, "whitelisted");
                    File.WriteAllText(Path.Combine(dir, "traps.txt"), "# traps\ntrap@example.net\n");
                    Check(engine.LoadList(ListKind.TrapRecipients, Path.Combine(dir, "traps.txt")) == 1, "loaded");
                    Check(engine.Check("203.0.113.1", "s@x.org", "trap@example.net", T0).Reason == Reason.Trapped, "trapped");
                    engine.Check("192.0.2.1", "a@x.org", "b@y.net", T0);
                    engine.Save(Path.Combine(dir, "g.snap"));
                }
                using (var loaded = Engine.Load(Path.Combine(dir, "g.snap")))
                    Check(loaded.Check("192.0.2.1", "a@x.org", "b@y.net", T0.AddSeconds(300)).Reason == Reason.Retried, "after load");
                File.WriteAllText(Path.Combine(dir, "bad.snap"), "GREYLIST but not really");
                var e = Throws<GreylistException>(() => Engine.Load(Path.Combine(dir, "bad.snap")));
                Check(e.Status == Status.Corrupt, e.Message);
            }
            finally
            {
                Directory.Delete(dir, true);
            }
        });

        Run("threads", () =>
        {
            using (var engine = new Engine())
            {
                int errors = 0;
                var threads = new Thread[4];
                for (int t = 0; t < threads.Length; t++)
                {
                    int id = t;
                    threads[t] = new Thread(() =>
                    {
                        for (int i = 0; i < 5000; i++)
                        {
                            try { engine.Check("10.0." + (i % 50) + "." + id, "s@example.org", "r@example.net", T0.AddSeconds(i / 2500 * 300)); }
                            catch (Exception) { Interlocked.Increment(ref errors); }
                        }
                    });
                    threads[t].Start();
                }
                foreach (var th in threads) th.Join();
                Check(errors == 0, "errors: " + errors);
                Check(engine.Count == 50, "count " + engine.Count);
            }
        });

        // Issue 22: what an Exchange admin needs: stats, the lost-mail report and
        // its events, a client's record, release, release of a client, forget.
        Run("lost_mail_report_and_events", () =>
        {
            using (var engine = new Engine())
            {
                var seen = new System.Collections.Generic.List<GreylistEvent>();
                EventHandler<GreylistEvent> handler = (sender, ev) => { lock (seen) seen.Add(ev); };
                engine.Event += handler;
                // Exchange 2003 SP2: two quick retries, then silence.
                engine.Check("192.0.2.1", "ceo@corp.example", "bob@example.net", T0);
                engine.Check("192.0.2.1", "ceo@corp.example", "bob@example.net", T0.AddSeconds(10));
                engine.Check("192.0.2.1", "ceo@corp.example", "bob@example.net", T0.AddSeconds(20));
                engine.Sweep(T0.AddSeconds(300 + 3600 + 1));
                var report = engine.LostMailReport();
                Check(report.Count == 1 && report[0].Network == "192.0.2.0/24" && report[0].Count == 1, "report");
                Check(report[0].LastSeen == T0.AddSeconds(20), "last seen " + report[0].LastSeen);
                var lost = seen.Find(e => e.Kind == EventKind.LostMail);
                Check(lost != null && lost.Network == "192.0.2.0/24" && lost.Count == 2, "lost-mail event");
                Check(seen.FindAll(e => e.Kind == EventKind.Deferred).Count == 3, "deferred events");
                var stats = engine.Stats();
                Check(stats.Checks == 3 && stats.NewTriplets == 1 && stats.EarlyRetries == 2 && stats.LostMail == 1, "stats");
                // Unsubscribed: no more events.
                engine.Event -= handler;
                int before = seen.Count;
                engine.Check("192.0.2.50", "x@corp.example", "bob@example.net", T0.AddSeconds(5000));
                Check(seen.Count == before, "an event after unsubscribing");
                Check(engine.LostMailReport(0).Count == 0, "capacity 0");
                Throws<ArgumentOutOfRangeException>(() => engine.LostMailReport(-1));
            }
        });

        Run("client_report_release_forget", () =>
        {
            var config = new Config { AwlTtl = 7 * 86400, PassCacheEntries = 10, PassCacheSeconds = 60 };
            using (var engine = new Engine(config))
            {
                engine.Check("192.0.2.1", "a@example.org", "b@example.net", T0);
                var c = engine.ClientReport("192.0.2.77", null, T0.AddSeconds(1));
                Check(c.Network == "192.0.2.0/24" && c.Pending == 1 && c.Passed == 0 && c.BlockedUntil == null, "pending");
                Check(!c.Whitelisted && !c.AutoWhitelisted && c.Passes == 0, "flags");
                // A user says the mail never arrived: released, it passes at once.
                engine.Release("192.0.2.1", "a@example.org", "b@example.net", T0.AddSeconds(2));
                Check(engine.Check("192.0.2.1", "a@example.org", "b@example.net", T0.AddSeconds(3)).Action == VerdictAction.Pass, "released");
                Check(engine.Forget("192.0.2.1", "a@example.org", "b@example.net"), "forgotten");
                Check(!engine.Forget("192.0.2.1", "a@example.org", "b@example.net"), "already forgotten");
                Check(engine.Check("192.0.2.1", "a@example.org", "b@example.net", T0.AddSeconds(4)).Reason == Reason.New, "new again");
                // Six copies block the network; releasing the client lifts it.
                for (int i = 0; i < 7; i++) engine.Check("198.51.100.7", "spam@x.example", "v@example.net", T0.AddSeconds(10 + i));
                var blocked = engine.ClientReport("198.51.100.7", null, T0.AddSeconds(20));
                Check(blocked.BlockedUntil.HasValue && blocked.BlockedUntil.Value > T0.AddSeconds(20), "blocked");
                Check(engine.ReleaseClient("198.51.100.7", T0.AddSeconds(21)) == 1, "one waiting triplet released");
                Check(engine.ClientReport("198.51.100.7", null, T0.AddSeconds(22)).BlockedUntil == null, "unblocked");
                var ex = Throws<GreylistException>(() => engine.ClientReport("not-an-ip"));
                Check(ex.Status == Status.InvalidArgument, "bad ip");
            }
            Throws<GreylistException>(() => new Engine(new Config { AwlThreshold = 5, AwlTtl = 60 }));
        });

        Run("events_from_threads_and_dispose", () =>
        {
            var engine = new Engine();
            long events = 0;
            engine.Event += (sender, ev) => Interlocked.Increment(ref events);
            var threads = new Thread[4];
            for (int t = 0; t < threads.Length; t++)
            {
                int id = t;
                threads[t] = new Thread(() =>
                {
                    for (int i = 0; i < 2000; i++)
                        engine.Check("10.1." + id + "." + (i % 200), "s" + i + "@example.org", "r@example.net", T0);
                });
                threads[t].Start();
            }
            foreach (var th in threads) th.Join();
            Check(Interlocked.Read(ref events) == 8000, "events " + events);
            // A handler that throws never reaches the library.
            engine.Event += (sender, ev) => { throw new InvalidOperationException("handler"); };
            engine.Check("10.9.9.9", "s@example.org", "r@example.net", T0);
            engine.Dispose();
            Throws<ObjectDisposedException>(() => engine.Stats());
        });

        // The sample Exchange agent (examples/ExchangeAgent.cs), through the
        // stand-in for Exchange's transport API.
        Run("exchange_agent", () =>
        {
            using (var engine = new Engine())
            {
                var now = T0;
                var agent = new GreylistAgent(engine, () => now);
                Func<string, SmtpResponse?> rcpt = ip =>
                {
                    var source = new ReceiveCommandEventSource();
                    agent.RaiseRcptCommand(source, new RcptCommandEventArgs
                    {
                        SmtpSession = new SmtpSession { RemoteEndPoint = new IPEndPoint(IPAddress.Parse(ip), 25) },
                        MailItem = new MailItem { FromAddress = new RoutingAddress("ceo@corp.example") },
                        RecipientAddress = new RoutingAddress("bob@example.net"),
                    });
                    return source.Rejected;
                };
                var first = rcpt("192.0.2.1");
                Check(first.HasValue && first.Value.StatusCode == "450" && first.Value.EnhancedStatusCode == "4.2.0", "first attempt");
                Check(first.Value.StatusText[0] == "Greylisted, please try again in 300 seconds", first.Value.StatusText[0]);
                now = T0.AddSeconds(301);
                Check(!rcpt("192.0.2.9").HasValue, "the retry after the delay is accepted");
            }
        });

        Console.WriteLine(passed + " passed, " + failed + " failed");
        return failed == 0 ? 0 : 1;
    }
}
