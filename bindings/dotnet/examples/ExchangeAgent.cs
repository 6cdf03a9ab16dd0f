// An Exchange 2007+ transport agent that greylists at RCPT TO, on the
// Greylist binding. Build it against Exchange's
// Microsoft.Exchange.Data.Transport.dll with Greylist.cs, put greylist.dll
// (the native library) beside the assembly, and register the factory:
//
//   Install-TransportAgent -Name "Greylist" -TransportAgentFactory
//     Greylist.Exchange.GreylistAgentFactory -AssemblyPath C:\Greylist\GreylistAgent.dll
//   Enable-TransportAgent -Identity "Greylist"; Restart-Service MSExchangeFrontEndTransport
//
// CI compiles it against a stand-in of that assembly
// (bindings/dotnet/tests/ExchangeStandIn.cs) and drives it there.

using System;
using Greylist;
using Microsoft.Exchange.Data.Transport;
using Microsoft.Exchange.Data.Transport.Smtp;

namespace Greylist.Exchange
{
    /// <summary>Made once by Exchange; every agent it makes shares one engine.</summary>
    public sealed class GreylistAgentFactory : SmtpReceiveAgentFactory
    {
        static readonly Engine SharedEngine = new Engine(new Config { Delay = 300 });

        public override SmtpReceiveAgent CreateAgent(SmtpServer server)
        {
            return new GreylistAgent(SharedEngine, () => DateTimeOffset.UtcNow);
        }
    }

    /// <summary>Defers an unknown (client, sender, recipient) with the engine's 450 reply.</summary>
    public sealed class GreylistAgent : SmtpReceiveAgent
    {
        readonly Engine engine;
        readonly Func<DateTimeOffset> clock;

        public GreylistAgent(Engine engine, Func<DateTimeOffset> clock)
        {
            this.engine = engine;
            this.clock = clock;
            OnRcptCommand += Rcpt;
        }

        void Rcpt(ReceiveCommandEventSource source, RcptCommandEventArgs e)
        {
            var ip = e.SmtpSession.RemoteEndPoint.Address.ToString();
            Verdict v;
            try
            {
                v = engine.Check(ip, e.MailItem.FromAddress.ToString(), e.RecipientAddress.ToString(), clock());
            }
            catch (GreylistException)
            {
                // What cannot be judged is deferred, never waved through.
                source.RejectCommand(new SmtpResponse("451", "4.3.0", "Greylisting cannot judge this request, please try again later"));
                return;
            }
            if (v.Action == VerdictAction.Pass) return;
            // The engine's reply: "450 4.2.0 Greylisted, please try again in 300 seconds".
            var parts = v.Reply.Split(new[] { ' ' }, 3);
            source.RejectCommand(new SmtpResponse(parts[0], parts[1], parts[2]));
        }
    }
}
