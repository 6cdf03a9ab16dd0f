// A small stand-in for the part of Microsoft.Exchange.Data.Transport that
// bindings/dotnet/examples/ExchangeAgent.cs uses (the real assembly ships
// with Exchange Server and cannot be had here), with the same names and
// shapes, so that the sample compiles in CI and cannot rot. The test
// (TestGreylist.cs, "exchange_agent") drives the agent through it.

using System.Net;

namespace Microsoft.Exchange.Data.Transport
{
    public struct RoutingAddress
    {
        readonly string address;
        public RoutingAddress(string address) { this.address = address; }
        public override string ToString() { return address ?? ""; }
    }

    public struct SmtpResponse
    {
        public SmtpResponse(string statusCode, string enhancedStatusCode, params string[] statusText)
        {
            StatusCode = statusCode;
            EnhancedStatusCode = enhancedStatusCode;
            StatusText = statusText;
        }
        public string StatusCode { get; }
        public string EnhancedStatusCode { get; }
        public string[] StatusText { get; }
    }

    public class SmtpServer { }

    public class MailItem
    {
        public RoutingAddress FromAddress { get; set; }
    }
}

namespace Microsoft.Exchange.Data.Transport.Smtp
{
    public class SmtpSession
    {
        public IPEndPoint RemoteEndPoint { get; set; }
    }

    public class ReceiveCommandEventSource
    {
        /// <summary>What the agent answered (the stand-in keeps it for the test).</summary>
        public SmtpResponse? Rejected { get; private set; }
        public void RejectCommand(SmtpResponse response) { Rejected = response; }
    }

    public class RcptCommandEventArgs
    {
        public RoutingAddress RecipientAddress { get; set; }
        public MailItem MailItem { get; set; }
        public SmtpSession SmtpSession { get; set; }
    }

    public delegate void RcptCommandEventHandler(ReceiveCommandEventSource source, RcptCommandEventArgs e);

    public abstract class SmtpReceiveAgent
    {
        protected event RcptCommandEventHandler OnRcptCommand;

        /// <summary>Stand-in only: Exchange raises the event itself.</summary>
        public void RaiseRcptCommand(ReceiveCommandEventSource source, RcptCommandEventArgs e)
        {
            var handler = OnRcptCommand;
            if (handler != null) handler(source, e);
        }
    }

    public abstract class SmtpReceiveAgentFactory
    {
        public abstract SmtpReceiveAgent CreateAgent(SmtpServer server);
    }
}
