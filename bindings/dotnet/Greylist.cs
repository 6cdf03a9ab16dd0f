// Greylist.cs: a .NET binding to libgreylist over P/Invoke, for Exchange
// transport agents and other .NET mail software. C# 7.3, no NuGet
// dependencies; builds with Mono's mcs and with the .NET SDK.
//
// The native library is "greylist" (libgreylist.so, greylist.dll). Strings
// cross as NUL-terminated UTF-8. Every failure is a GreylistException with
// the library's status and message; using a disposed Engine throws
// ObjectDisposedException. An Engine may be used from many threads.

using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Text;

namespace Greylist
{
    /// <summary>What the mail server should do (not named Action, which
    /// every file that says <c>using System;</c> has as System.Action).</summary>
    public enum VerdictAction : uint { Pass = 0, Defer = 1, Block = 2 }

    /// <summary>Why the engine decided so.</summary>
    public enum Reason : uint
    {
        New = 1, EarlyRetry = 2, Retried = 3, Passed = 4,
        Whitelisted = 5, AutoWhitelisted = 6, Blocked = 7, Trapped = 8,
        /// <summary>Redis did not answer in time or failed: the local table decided
        /// (a defer becomes a pass unless <see cref="Config.RedisFailDefer"/>).</summary>
        StoreUnavailable = 9,
    }

    /// <summary>What the client part of a check's key was (<see cref="Verdict.Key"/>).</summary>
    public enum KeyKind : uint
    {
        /// <summary>The client's network (its address masked to the configured prefix).</summary>
        Network = 1,
        /// <summary>The registrable domain of the client's verified host name
        /// (<see cref="Config.KeyByHostName"/>).</summary>
        HostDomain = 2,
        /// <summary>A sender domain the MTA verified, by SPF or DKIM
        /// (<see cref="Config.KeyByVerifiedDomain"/>).</summary>
        VerifiedDomain = 3,
    }

    /// <summary>What the MTA knows of the client beyond the triplet, for
    /// <see cref="Engine.Check(string, string, string, ClientInfo, DateTimeOffset?)"/>;
    /// each is optional (null).</summary>
    public sealed class ClientInfo
    {
        /// <summary>The client's host name as the MTA verified it (forward-confirmed
        /// reverse DNS): matched against host-name whitelist entries, and its registrable
        /// domain keys the check when <see cref="Config.KeyByHostName"/> is on (the default)
        /// and the name is not generic.</summary>
        public string ClientName { get; set; }
        /// <summary>The HELO/EHLO name; never decides anything (unverified).</summary>
        public string Helo { get; set; }
        /// <summary>A sender domain the MTA verified (SPF or DKIM); keys the check when
        /// <see cref="Config.KeyByVerifiedDomain"/> is on.</summary>
        public string VerifiedDomain { get; set; }
    }

    /// <summary>greylist_status codes.</summary>
    public enum Status : uint
    {
        Ok = 0, NullArgument = 1, InvalidArgument = 2, Io = 3,
        Corrupt = 4, Panic = 5, BufferTooSmall = 6, Incompatible = 7, Unavailable = 8,
    }

    /// <summary>Lists an engine keeps.</summary>
    public enum ListKind : uint { Clients = 0, Senders = 1, Recipients = 2, TrapRecipients = 3 }

    /// <summary>A failed call: the status and the library's message.</summary>
    public class GreylistException : Exception
    {
        public Status Status { get; }
        public GreylistException(Status status, string message) : base(message) { Status = status; }
    }

    /// <summary>The answer for one triplet.</summary>
    public sealed class Verdict
    {
        public VerdictAction Action { get; }
        public Reason Reason { get; }
        /// <summary>For a defer: seconds until a retry passes; for a block: until it ends.</summary>
        public uint RetryAfter { get; }
        /// <summary>For Reason.Retried: seconds the mail waited.</summary>
        public uint Delayed { get; }
        /// <summary>The suggested SMTP reply for a defer or block, else null.</summary>
        public string Reply { get; }
        /// <summary>What keyed the check: a verified host name's or sender's domain, or
        /// (always for a check of the bare triplet) the client network.</summary>
        public KeyKind Key { get; }

        internal Verdict(Native.VerdictRaw raw, string reply, KeyKind key)
        {
            Action = (VerdictAction)raw.action;
            Reason = (Reason)raw.reason;
            RetryAfter = raw.retry_after;
            Delayed = raw.delayed;
            Reply = reply;
            Key = key;
        }
    }

    /// <summary>What an event reports (<see cref="Engine.Event"/>).</summary>
    public enum EventKind : uint
    {
        Deferred = 1, Passed = 2, Blocked = 3,
        /// <summary>A triplet with only early retries expired unretried: most likely lost mail.</summary>
        LostMail = 4,
        /// <summary>A triplet judged lost passed after all.</summary>
        Recovered = 5,
        BlockStarted = 6, BlockEnded = 7,
    }

    /// <summary>One event: a copy, valid after the callback too.</summary>
    public sealed class GreylistEvent
    {
        public EventKind Kind { get; }
        public Reason Reason { get; }
        /// <summary>The client network (<c>192.0.2.0/24</c>) or verified domain.</summary>
        public string Network { get; }
        /// <summary>The check's time, the lost triplet's last attempt, or the end of a block.</summary>
        public DateTimeOffset At { get; }
        /// <summary>For LostMail and a blasting BlockStarted: the triplet's early retries; else 0.</summary>
        public uint Count { get; }

        internal GreylistEvent(EventKind kind, Reason reason, string network, long at, uint count)
        {
            Kind = kind; Reason = reason; Network = network;
            At = DateTimeOffset.FromUnixTimeSeconds(at); Count = count;
        }
    }

    /// <summary>One row of the lost-mail report: a network whose mail was most likely lost.</summary>
    public sealed class LostMail
    {
        public string Network { get; }
        /// <summary>Its triplets that expired having seen only early retries.</summary>
        public ulong Count { get; }
        /// <summary>The last attempt of the latest one.</summary>
        public DateTimeOffset LastSeen { get; }

        internal LostMail(string network, ulong count, long lastSeen)
        {
            Network = network; Count = count; LastSeen = DateTimeOffset.FromUnixTimeSeconds(lastSeen);
        }
    }

    /// <summary>What the engine knows of one client network.</summary>
    public sealed class ClientReport
    {
        public string Network { get; }
        public bool Whitelisted { get; }
        public bool AutoWhitelisted { get; }
        /// <summary>When its block ends; null when not blocked.</summary>
        public DateTimeOffset? BlockedUntil { get; }
        /// <summary>Its triplets waiting for a retry.</summary>
        public ulong Pending { get; }
        public ulong Passed { get; }
        /// <summary>Its triplets that expired having seen only early retries.</summary>
        public ulong LostMail { get; }
        /// <summary>Passes counted towards the auto-whitelist (one an hour at most).</summary>
        public uint Passes { get; }

        internal ClientReport(Native.ClientReportRaw raw)
        {
            Network = Native.Text(raw.network);
            Whitelisted = (raw.flags & 1) != 0;
            AutoWhitelisted = (raw.flags & 2) != 0;
            if ((raw.flags & 4) != 0) BlockedUntil = DateTimeOffset.FromUnixTimeSeconds(raw.blocked_until);
            Pending = raw.pending; Passed = raw.passed; LostMail = raw.lost_mail; Passes = raw.passes;
        }
    }

    /// <summary>The engine's counters (greylist_stats).</summary>
    public sealed class Stats
    {
        public ulong Checks, NewTriplets, EarlyRetries, Retried, Passed, Whitelisted, AutoWhitelisted,
            Blocked, Expired, Evicted, LostMail, Entries, Clients, Trapped, StoreUnavailable,
            StoreRoundTrips, StoreErrors, StoreTimeouts, CacheHits, ClientsEvicted, StoreMalformed,
            LostRecovered;

        internal Stats(Native.StatsRaw r)
        {
            Checks = r.checks; NewTriplets = r.new_triplets; EarlyRetries = r.early_retries;
            Retried = r.retried; Passed = r.passed; Whitelisted = r.whitelisted;
            AutoWhitelisted = r.auto_whitelisted; Blocked = r.blocked; Expired = r.expired;
            Evicted = r.evicted; LostMail = r.lost_mail; Entries = r.entries; Clients = r.clients;
            Trapped = r.trapped; StoreUnavailable = r.store_unavailable;
            StoreRoundTrips = r.store_round_trips; StoreErrors = r.store_errors;
            StoreTimeouts = r.store_timeouts; CacheHits = r.cache_hits;
            ClientsEvicted = r.clients_evicted; StoreMalformed = r.store_malformed;
            LostRecovered = r.lost_recovered;
        }
    }

    internal static class Native
    {
        const string Lib = "greylist";
        public const uint AbiVersion = 1;
        public const long Now = long.MinValue;

        [StructLayout(LayoutKind.Sequential)]
        public struct VerdictRaw
        {
            public uint action, reason, retry_after, delayed;
        }

        /// <summary>greylist_request: append-only, <c>struct_size</c> tells the library
        /// which fields this binding knows. The pointers are pinned by the caller.</summary>
        [StructLayout(LayoutKind.Sequential)]
        public struct RequestRaw
        {
            public UIntPtr struct_size;
            public IntPtr client_ip, sender, recipient, client_name, helo, verified_domain;
            public long now;
            /// <summary>NULL, or where the library writes a GREYLIST_KEY_* number.</summary>
            public IntPtr key_used;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct StatsRaw
        {
            public uint struct_size, reserved;
            public ulong checks, new_triplets, early_retries, retried, passed, whitelisted,
                auto_whitelisted, blocked, expired, evicted, lost_mail, entries, clients, trapped,
                store_unavailable, store_round_trips, store_errors, store_timeouts, cache_hits,
                clients_evicted, store_malformed, lost_recovered;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct LostMailRaw
        {
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 256)] public byte[] network;
            public ulong count;
            public long last_seen;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct ClientReportRaw
        {
            public uint struct_size, flags;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 64)] public byte[] network;
            public ulong pending, passed, lost_mail;
            public long blocked_until;
            public uint passes, reserved;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct EventRaw
        {
            public uint kind, reason;
            public IntPtr network;
            public long at;
            public uint count;
        }

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void EventFn(IntPtr userData, ref EventRaw ev);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_awl_ttl(IntPtr config, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_pass_cache(IntPtr config, uint entries, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_key_by_verified_domain(IntPtr config, [MarshalAs(UnmanagedType.U1)] bool enable);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_key_by_host_name(IntPtr config, [MarshalAs(UnmanagedType.U1)] bool enable);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_check_request(EngineHandle engine, ref RequestRaw request, out VerdictRaw verdict);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_stats(EngineHandle engine, ref StatsRaw stats);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_lost_mail_report(EngineHandle engine, [Out] LostMailRaw[] rows, UIntPtr capacity, out UIntPtr count);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_client_report(EngineHandle engine, byte[] ip, byte[] name, long now, ref ClientReportRaw report);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_release(EngineHandle engine, byte[] ip, byte[] sender, byte[] recipient, long now);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_release_client(EngineHandle engine, byte[] ip, long now, out ulong released);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_forget(EngineHandle engine, byte[] ip, byte[] sender, byte[] recipient, [MarshalAs(UnmanagedType.U1)] out bool found);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_set_event_callback(EngineHandle engine, EventFn callback, IntPtr userData);

        /// <summary>A NUL-terminated UTF-8 string the library owns.</summary>
        public static string PtrToUtf8(IntPtr p)
        {
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            var bytes = new byte[n];
            Marshal.Copy(p, bytes, 0, n);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>A NUL-terminated UTF-8 field.</summary>
        public static string Text(byte[] field)
        {
            int n = Array.IndexOf(field, (byte)0);
            return Encoding.UTF8.GetString(field, 0, n < 0 ? field.Length : n);
        }

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr greylist_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_abi_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern UIntPtr greylist_last_error(byte[] buf, UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr greylist_config_new();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void greylist_config_free(IntPtr config);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_delay(IntPtr config, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_retry_window(IntPtr config, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_pass_ttl(IntPtr config, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_awl_threshold(IntPtr config, uint passes);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_max_entries(IntPtr config, ulong entries);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_max_clients(IntPtr config, ulong clients);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_blast(IntPtr config, uint rounds, uint blockSeconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_blast_copies(IntPtr config, uint copies);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_lost_after(IntPtr config, uint seconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_prefixes(IntPtr config, byte ipv4, byte ipv6);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_reply(IntPtr config, ushort code, byte[] enhanced, byte[] text);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_redis(IntPtr config, byte[] url);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_redis_prefix(IntPtr config, byte[] prefix);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_redis_timeout_ms(IntPtr config, uint milliseconds);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_redis_fail_defer(IntPtr config, [MarshalAs(UnmanagedType.U1)] bool defer);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_secret_file(IntPtr config, byte[] path);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_config_set_redis_ca_file(IntPtr config, byte[] path);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_new(IntPtr config, out EngineHandle engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_load(IntPtr config, byte[] path, out EngineHandle engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void greylist_engine_free(IntPtr engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_check(EngineHandle engine, byte[] ip, byte[] sender, byte[] recipient, long now, out VerdictRaw verdict);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_sweep(EngineHandle engine, long now, out ulong removed);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern ulong greylist_engine_len(EngineHandle engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_save(EngineHandle engine, byte[] path);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_set_list(EngineHandle engine, uint kind, IntPtr[] entries, UIntPtr count, [MarshalAs(UnmanagedType.U1)] bool replace);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_engine_load_list(EngineHandle engine, uint kind, byte[] path, out UIntPtr loaded);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint greylist_verdict_reply(EngineHandle engine, ref VerdictRaw verdict, byte[] buf, UIntPtr len);

        /// <summary>A string as NUL-terminated UTF-8; null stays null (the library names it).</summary>
        public static byte[] Utf8(string s, string argument)
        {
            if (s == null) return null;
            if (s.IndexOf('\0') >= 0)
                throw new GreylistException(Status.InvalidArgument, argument + ": contains a NUL character");
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        public static string LastError()
        {
            ulong n = (ulong)greylist_last_error(null, UIntPtr.Zero);
            var buf = new byte[n + 1];
            greylist_last_error(buf, (UIntPtr)buf.Length);
            return Encoding.UTF8.GetString(buf, 0, (int)n);
        }

        /// <summary>The one place a status becomes an exception.</summary>
        public static void Check(uint status)
        {
            if (status != 0) throw new GreylistException((Status)status, LastError());
        }
    }

    /// <summary>The native engine, freed exactly once (also by the finalizer).</summary>
    internal sealed class EngineHandle : SafeHandle
    {
        public EngineHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle()
        {
            Native.greylist_engine_free(handle);
            return true;
        }
    }

    /// <summary>Engine settings; unset ones keep the library's defaults.</summary>
    public sealed class Config
    {
        public uint? Delay { get; set; }
        public uint? RetryWindow { get; set; }
        public uint? PassTtl { get; set; }
        public uint? AwlThreshold { get; set; }
        public ulong? MaxEntries { get; set; }
        public ulong? MaxClients { get; set; }
        /// <summary>Early-retry rounds (distinct seconds) within one delay that block a network; 0: off (default 20).</summary>
        public uint? BlastThreshold { get; set; }
        /// <summary>Early retries of one triplet that, when exceeded, block its network; 0: off (default 5).</summary>
        public uint? BlastCopies { get; set; }
        /// <summary>How long a blocked network stays blocked, in seconds (default 3600).</summary>
        public uint? BlockTime { get; set; }
        /// <summary>Seconds after its delay that a triplet with only early retries and no attempt since counts as lost mail (default 3600).</summary>
        public uint? LostAfter { get; set; }
        public byte? Ipv4Prefix { get; set; }
        public byte? Ipv6Prefix { get; set; }
        public ushort? ReplyCode { get; set; }
        public string ReplyEnhanced { get; set; }
        public string GreylistText { get; set; }
        /// <summary>Share triplets with other MX hosts through Redis:
        /// <c>redis://[:password@]host:6379/0</c>, <c>rediss://</c> for TLS.
        /// Needs <see cref="RedisSecretFile"/>.</summary>
        public string Redis { get; set; }
        /// <summary>A file of 32 hex digits every MX host shares (<c>openssl rand -hex 16</c>).</summary>
        public string RedisSecretFile { get; set; }
        /// <summary>For <c>rediss://</c>: a PEM file with the CA to trust instead of the system's roots.</summary>
        public string RedisCaFile { get; set; }
        /// <summary>Prefix of the engine's Redis keys (default <c>greylist:</c>).</summary>
        public string RedisPrefix { get; set; }
        /// <summary>How long a check waits for Redis (default 50 ms).</summary>
        public uint? RedisTimeoutMs { get; set; }
        /// <summary>When Redis fails, keep the local table's defer instead of passing (default false).</summary>
        public bool? RedisFailDefer { get; set; }
        /// <summary>Lifetime of an auto-whitelist record, refreshed on each use (default 35 days); at least an hour when more than one pass is needed.</summary>
        public uint? AwlTtl { get; set; }
        /// <summary>Key a check whose <see cref="ClientInfo.ClientName"/> is a verified,
        /// non-generic host name by the name's registrable domain instead of the client
        /// network (<c>mail-sor-f41.google.com</c> keys as <c>google.com</c>), so a pool that
        /// retries from another network passes (default true). A generic name (the client's
        /// address in it, or words such as dsl, dyn, pool) keeps the network.</summary>
        public bool? KeyByHostName { get; set; }
        /// <summary>Key a check with a <see cref="ClientInfo.VerifiedDomain"/> by that domain
        /// instead of the client network (default false).</summary>
        public bool? KeyByVerifiedDomain { get; set; }
        /// <summary>The local cache of triplets Redis said passed: entries (0: off; default 100000) ...</summary>
        public uint? PassCacheEntries { get; set; }
        /// <summary>... each kept this many seconds (default 300).</summary>
        public uint? PassCacheSeconds { get; set; }

        /// <summary>Builds a native config, calls use with it, frees it.</summary>
        internal T With<T>(Func<IntPtr, T> use)
        {
            IntPtr c = Native.greylist_config_new();
            if (c == IntPtr.Zero) throw new GreylistException(Status.Panic, "greylist_config_new failed");
            try
            {
                if (Delay.HasValue) Native.Check(Native.greylist_config_set_delay(c, Delay.Value));
                if (RetryWindow.HasValue) Native.Check(Native.greylist_config_set_retry_window(c, RetryWindow.Value));
                if (PassTtl.HasValue) Native.Check(Native.greylist_config_set_pass_ttl(c, PassTtl.Value));
                if (AwlThreshold.HasValue) Native.Check(Native.greylist_config_set_awl_threshold(c, AwlThreshold.Value));
                if (MaxEntries.HasValue) Native.Check(Native.greylist_config_set_max_entries(c, MaxEntries.Value));
                if (MaxClients.HasValue) Native.Check(Native.greylist_config_set_max_clients(c, MaxClients.Value));
                if (BlastThreshold.HasValue || BlockTime.HasValue)
                    Native.Check(Native.greylist_config_set_blast(c, BlastThreshold ?? 20, BlockTime ?? 3600));
                if (BlastCopies.HasValue) Native.Check(Native.greylist_config_set_blast_copies(c, BlastCopies.Value));
                if (LostAfter.HasValue) Native.Check(Native.greylist_config_set_lost_after(c, LostAfter.Value));
                if (Ipv4Prefix.HasValue || Ipv6Prefix.HasValue)
                    Native.Check(Native.greylist_config_set_prefixes(c, Ipv4Prefix ?? 24, Ipv6Prefix ?? 64));
                if (ReplyCode.HasValue || ReplyEnhanced != null || GreylistText != null)
                    Native.Check(Native.greylist_config_set_reply(c, ReplyCode ?? 450,
                        Native.Utf8(ReplyEnhanced ?? "4.2.0", "ReplyEnhanced"),
                        Native.Utf8(GreylistText ?? "Greylisted, please try again in %s seconds", "GreylistText")));
                if (RedisSecretFile != null) Native.Check(Native.greylist_config_set_secret_file(c, Native.Utf8(RedisSecretFile, "RedisSecretFile")));
                if (Redis != null) Native.Check(Native.greylist_config_set_redis(c, Native.Utf8(Redis, "Redis")));
                if (RedisCaFile != null) Native.Check(Native.greylist_config_set_redis_ca_file(c, Native.Utf8(RedisCaFile, "RedisCaFile")));
                if (RedisPrefix != null) Native.Check(Native.greylist_config_set_redis_prefix(c, Native.Utf8(RedisPrefix, "RedisPrefix")));
                if (RedisTimeoutMs.HasValue) Native.Check(Native.greylist_config_set_redis_timeout_ms(c, RedisTimeoutMs.Value));
                if (RedisFailDefer.HasValue) Native.Check(Native.greylist_config_set_redis_fail_defer(c, RedisFailDefer.Value));
                if (AwlTtl.HasValue) Native.Check(Native.greylist_config_set_awl_ttl(c, AwlTtl.Value));
                if (KeyByHostName.HasValue) Native.Check(Native.greylist_config_set_key_by_host_name(c, KeyByHostName.Value));
                if (KeyByVerifiedDomain.HasValue) Native.Check(Native.greylist_config_set_key_by_verified_domain(c, KeyByVerifiedDomain.Value));
                if (PassCacheEntries.HasValue || PassCacheSeconds.HasValue)
                    Native.Check(Native.greylist_config_set_pass_cache(c, PassCacheEntries ?? 100000, PassCacheSeconds ?? 300));
                return use(c);
            }
            finally
            {
                Native.greylist_config_free(c);
            }
        }
    }

    /// <summary>A greylisting engine. Thread-safe; dispose it when done.</summary>
    public sealed class Engine : IDisposable
    {
        readonly EngineHandle handle;

        static Engine()
        {
            uint abi = Native.greylist_abi_version();
            if (abi != Native.AbiVersion)
                throw new GreylistException(Status.Incompatible,
                    "libgreylist has ABI " + abi + ", this binding needs ABI " + Native.AbiVersion);
        }

        /// <summary>The native library's version.</summary>
        public static string Version { get { return Marshal.PtrToStringAnsi(Native.greylist_version()); } }

        public Engine() : this(new Config()) { }

        public Engine(Config config)
        {
            handle = config.With(c =>
            {
                EngineHandle h;
                Native.Check(Native.greylist_engine_new(c, out h));
                return h;
            });
        }

        Engine(EngineHandle h) { handle = h; }

        /// <summary>An engine loaded from a snapshot.</summary>
        public static Engine Load(string path, Config config = null)
        {
            var bytes = Native.Utf8(path, "path");
            return (config ?? new Config()).With(c =>
            {
                EngineHandle h;
                Native.Check(Native.greylist_engine_load(c, bytes, out h));
                return new Engine(h);
            });
        }

        EngineHandle Live()
        {
            if (handle.IsClosed) throw new ObjectDisposedException("Greylist.Engine");
            return handle;
        }

        static long Seconds(DateTimeOffset? now)
        {
            return now.HasValue ? now.Value.ToUnixTimeSeconds() : Native.Now;
        }

        /// <summary>Decides one triplet and records the attempt; now: null for the clock.</summary>
        public Verdict Check(string ip, string sender, string recipient, DateTimeOffset? now = null)
        {
            var h = Live();
            Native.VerdictRaw raw;
            Native.Check(Native.greylist_engine_check(h, Native.Utf8(ip, "client_ip"),
                Native.Utf8(sender, "sender"), Native.Utf8(recipient, "recipient"), Seconds(now), out raw));
            return WithReply(h, raw, KeyKind.Network);
        }

        /// <summary>Decides one request with what the MTA knows of the client
        /// (<paramref name="client"/>: null for nothing) and records the attempt; the
        /// verdict's <see cref="Verdict.Key"/> says what keyed it. now: null for the clock.</summary>
        public Verdict Check(string ip, string sender, string recipient, ClientInfo client, DateTimeOffset? now = null)
        {
            var h = Live();
            client = client ?? new ClientInfo();
            var strings = new[]
            {
                Native.Utf8(ip, "client_ip"), Native.Utf8(sender, "sender"), Native.Utf8(recipient, "recipient"),
                Native.Utf8(client.ClientName, "client_name"), Native.Utf8(client.Helo, "helo"),
                Native.Utf8(client.VerifiedDomain, "verified_domain"),
            };
            var key = new uint[] { (uint)KeyKind.Network };
            var pinned = new List<GCHandle>();
            try
            {
                Func<object, IntPtr> pin = o =>
                {
                    if (o == null) return IntPtr.Zero;
                    var g = GCHandle.Alloc(o, GCHandleType.Pinned);
                    pinned.Add(g);
                    return g.AddrOfPinnedObject();
                };
                var request = new Native.RequestRaw
                {
                    struct_size = (UIntPtr)Marshal.SizeOf(typeof(Native.RequestRaw)),
                    client_ip = pin(strings[0]), sender = pin(strings[1]), recipient = pin(strings[2]),
                    client_name = pin(strings[3]), helo = pin(strings[4]), verified_domain = pin(strings[5]),
                    now = Seconds(now),
                    key_used = pin(key),
                };
                Native.VerdictRaw raw;
                Native.Check(Native.greylist_engine_check_request(h, ref request, out raw));
                return WithReply(h, raw, (KeyKind)key[0]);
            }
            finally
            {
                foreach (var g in pinned) g.Free();
            }
        }

        static Verdict WithReply(EngineHandle h, Native.VerdictRaw raw, KeyKind key)
        {
            string reply = null;
            if (raw.action != (uint)VerdictAction.Pass)
            {
                var buf = new byte[640];
                Native.Check(Native.greylist_verdict_reply(h, ref raw, buf, (UIntPtr)buf.Length));
                reply = Encoding.UTF8.GetString(buf, 0, Array.IndexOf(buf, (byte)0));
            }
            return new Verdict(raw, reply, key);
        }

        /// <summary>Removes expired entries; returns how many triplets went.</summary>
        public ulong Sweep(DateTimeOffset? now = null)
        {
            ulong removed;
            Native.Check(Native.greylist_engine_sweep(Live(), Seconds(now), out removed));
            return removed;
        }

        /// <summary>Triplet entries in the table.</summary>
        public ulong Count { get { return Native.greylist_engine_len(Live()); } }

        /// <summary>Writes a crash-safe snapshot.</summary>
        public void Save(string path)
        {
            Native.Check(Native.greylist_engine_save(Live(), Native.Utf8(path, "path")));
        }

        /// <summary>Replaces (or extends) one list; a bad entry throws and changes nothing.</summary>
        public void SetList(ListKind kind, IList<string> entries, bool replace = true)
        {
            var pinned = new List<GCHandle>();
            try
            {
                var pointers = new IntPtr[Math.Max(1, entries.Count)];
                for (int i = 0; i < entries.Count; i++)
                {
                    var g = GCHandle.Alloc(Native.Utf8(entries[i], "entries"), GCHandleType.Pinned);
                    pinned.Add(g);
                    pointers[i] = g.AddrOfPinnedObject();
                }
                Native.Check(Native.greylist_engine_set_list(Live(), (uint)kind, pointers, (UIntPtr)entries.Count, replace));
            }
            finally
            {
                foreach (var g in pinned) g.Free();
            }
        }

        /// <summary>Replaces one list with a file's entries; returns how many.</summary>
        public ulong LoadList(ListKind kind, string path)
        {
            UIntPtr loaded;
            Native.Check(Native.greylist_engine_load_list(Live(), (uint)kind, Native.Utf8(path, "path"), out loaded));
            return (ulong)loaded;
        }

        /// <summary>The engine's counters, read while checks go on.</summary>
        public Stats Stats()
        {
            var raw = new Native.StatsRaw { struct_size = (uint)Marshal.SizeOf(typeof(Native.StatsRaw)) };
            Native.Check(Native.greylist_engine_stats(Live(), ref raw));
            return new Stats(raw);
        }

        /// <summary>Networks whose mail was most likely lost, worst first (at most <paramref name="max"/>).</summary>
        public IList<LostMail> LostMailReport(int max = 100)
        {
            if (max < 0) throw new ArgumentOutOfRangeException("max");
            var rows = new Native.LostMailRaw[max];
            UIntPtr count;
            Native.Check(Native.greylist_engine_lost_mail_report(Live(), rows, (UIntPtr)max, out count));
            var report = new List<LostMail>();
            for (int i = 0; i < (int)count; i++)
                report.Add(new LostMail(Native.Text(rows[i].network), rows[i].count, rows[i].last_seen));
            return report;
        }

        /// <summary>What the engine knows of <paramref name="ip"/>'s network; <paramref name="clientName"/>
        /// (or null) is checked against host-name whitelist entries.</summary>
        public ClientReport ClientReport(string ip, string clientName = null, DateTimeOffset? now = null)
        {
            var raw = new Native.ClientReportRaw { struct_size = (uint)Marshal.SizeOf(typeof(Native.ClientReportRaw)) };
            Native.Check(Native.greylist_engine_client_report(Live(), Native.Utf8(ip, "client_ip"),
                Native.Utf8(clientName, "client_name"), Seconds(now), ref raw));
            return new ClientReport(raw);
        }

        /// <summary>Lets a triplet pass from now on, as if retried after the delay (a user's "my mail never arrived").</summary>
        public void Release(string ip, string sender, string recipient, DateTimeOffset? now = null)
        {
            Native.Check(Native.greylist_engine_release(Live(), Native.Utf8(ip, "client_ip"),
                Native.Utf8(sender, "sender"), Native.Utf8(recipient, "recipient"), Seconds(now)));
        }

        /// <summary>Lifts a network's block and lets its waiting triplets pass; returns how many.</summary>
        public ulong ReleaseClient(string ip, DateTimeOffset? now = null)
        {
            ulong released;
            Native.Check(Native.greylist_engine_release_client(Live(), Native.Utf8(ip, "client_ip"), Seconds(now), out released));
            return released;
        }

        /// <summary>Forgets a triplet (its next attempt is new); returns whether it was known.</summary>
        public bool Forget(string ip, string sender, string recipient)
        {
            bool found;
            Native.Check(Native.greylist_engine_forget(Live(), Native.Utf8(ip, "client_ip"),
                Native.Utf8(sender, "sender"), Native.Utf8(recipient, "recipient"), out found));
            return found;
        }

        // The delegate the library calls: kept referenced here (so the GC
        // never collects it while the library may call it) until the library
        // has let go of it (setting another callback waits for calls in
        // flight), and raised as the Event.
        Native.EventFn callback;
        EventHandler<GreylistEvent> listeners;
        readonly object eventLock = new object();

        /// <summary>Events (defers, passes, blocks, lost mail, recoveries), raised on the thread
        /// that made the check or sweep. A handler must be thread-safe; an exception it throws is
        /// caught and dropped (it cannot cross into the library).</summary>
        public event EventHandler<GreylistEvent> Event
        {
            add { lock (eventLock) { listeners += value; Subscribe(); } }
            remove { lock (eventLock) { listeners -= value; Subscribe(); } }
        }

        void Subscribe()
        {
            if (listeners != null && callback == null)
            {
                var fn = new Native.EventFn(OnEvent);
                Native.Check(Native.greylist_engine_set_event_callback(Live(), fn, IntPtr.Zero));
                callback = fn;
            }
            else if (listeners == null && callback != null)
            {
                // Returns once no call of the old callback is running: only
                // then may the delegate be let go.
                Native.Check(Native.greylist_engine_set_event_callback(Live(), null, IntPtr.Zero));
                callback = null;
            }
        }

        void OnEvent(IntPtr userData, ref Native.EventRaw raw)
        {
            try
            {
                string network = raw.network == IntPtr.Zero ? "" : Native.PtrToUtf8(raw.network);
                var ev = new GreylistEvent((EventKind)raw.kind, (Reason)raw.reason, network, raw.at, raw.count);
                var handlers = listeners;
                if (handlers != null) handlers(this, ev);
            }
            catch (Exception)
            {
                // Never across the native frame.
            }
        }

        /// <summary>Frees the native engine (after its event callback is let go); safe to call twice.</summary>
        public void Dispose()
        {
            lock (eventLock)
            {
                if (callback != null && !handle.IsClosed)
                {
                    Native.greylist_engine_set_event_callback(handle, null, IntPtr.Zero);
                    callback = null;
                }
                listeners = null;
            }
            handle.Dispose();
        }
    }
}
