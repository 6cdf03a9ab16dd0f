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
    /// <summary>What the mail server should do.</summary>
    public enum Action : uint { Pass = 0, Defer = 1, Block = 2 }

    /// <summary>Why the engine decided so.</summary>
    public enum Reason : uint
    {
        New = 1, EarlyRetry = 2, Retried = 3, Passed = 4,
        Whitelisted = 5, AutoWhitelisted = 6, Blocked = 7, Trapped = 8,
        /// <summary>Redis did not answer in time or failed: the local table decided
        /// (a defer becomes a pass unless <see cref="Config.RedisFailDefer"/>).</summary>
        StoreUnavailable = 9,
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
        public Action Action { get; }
        public Reason Reason { get; }
        /// <summary>For a defer: seconds until a retry passes; for a block: until it ends.</summary>
        public uint RetryAfter { get; }
        /// <summary>For Reason.Retried: seconds the mail waited.</summary>
        public uint Delayed { get; }
        /// <summary>The suggested SMTP reply for a defer or block, else null.</summary>
        public string Reply { get; }

        internal Verdict(Native.VerdictRaw raw, string reply)
        {
            Action = (Action)raw.action;
            Reason = (Reason)raw.reason;
            RetryAfter = raw.retry_after;
            Delayed = raw.delayed;
            Reply = reply;
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
            string reply = null;
            if (raw.action != (uint)Action.Pass)
            {
                var buf = new byte[640];
                Native.Check(Native.greylist_verdict_reply(h, ref raw, buf, (UIntPtr)buf.Length));
                reply = Encoding.UTF8.GetString(buf, 0, Array.IndexOf(buf, (byte)0));
            }
            return new Verdict(raw, reply);
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

        /// <summary>Frees the native engine; safe to call twice.</summary>
        public void Dispose()
        {
            handle.Dispose();
        }
    }
}
