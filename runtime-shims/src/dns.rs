//! DNS on the wire: hickory-server answers UDP and TCP on one address from a [`Resolve`]r
//! the node supplies (plain questions in, plain records out, so the node's answering
//! stays pure and simulable); names the resolver does not own go to upstream servers.

use crate::BoxFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record as WireRecord, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A TCP client that sends nothing is dropped after this.
pub const TCP_IDLE_MS: u64 = 5_000;
/// How long one upstream has to answer a forwarded question.
pub const FORWARD_TIMEOUT_MS: u64 = 2_000;
/// Upstreams tried per question, in order, at most.
pub const FORWARD_TRIES_MAX: usize = 3;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Txt,
    Any,
    Other(u16),
}

/// A question: `name` in lower case, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: QType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Cname(String),
    Txt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl_s: u32,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The name is ours: these records (none: the name exists without that type).
    Answer {
        answers: Vec<Record>,
        additional: Vec<Record>,
    },
    /// The name is ours and does not exist.
    NxDomain,
    /// Not ours: upstream servers answer it (refused without any).
    Forward,
}

/// The node's side: answers a question from what it holds, without waiting.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, q: &Question) -> Reply;
}

/// Binds `addr` for UDP and TCP (port 0: one free port for both). Returns the bound
/// address and the server to run.
pub async fn bind(
    addr: SocketAddr,
    resolver: Arc<dyn Resolve>,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<(SocketAddr, BoxFuture<'static, ()>)> {
    let (udp, tcp) = bind_both(addr).await?;
    let bound = udp.local_addr()?;
    let mut server = ServerFuture::new(Handler {
        resolver,
        upstreams: Arc::new(upstreams),
    });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_millis(TCP_IDLE_MS));
    let run = async move {
        if let Err(e) = server.block_until_done().await {
            tracing::error!("dns server on {bound} ended: {e}");
        }
    };
    Ok((bound, Box::pin(run)))
}

/// Tries for port 0: the port the system gives UDP may be taken for TCP.
const BIND_TRIES: usize = 16;

/// A UDP socket and a TCP listener on one address; for port 0, one free port for both.
async fn bind_both(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut tries = if addr.port() == 0 { BIND_TRIES } else { 1 };
    loop {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

struct Handler {
    resolver: Arc<dyn Resolve>,
    upstreams: Arc<Vec<SocketAddr>>,
}

fn qtype_of(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::TXT => QType::Txt,
        RecordType::ANY => QType::Any,
        other => QType::Other(u16::from(other)),
    }
}

/// A name from its labels as they are: `apache@2` is one label, not an escape.
fn name_of(s: &str) -> Option<Name> {
    let labels = s.trim_end_matches('.').split('.').filter(|l| !l.is_empty());
    let mut n = Name::from_labels(labels.map(str::as_bytes)).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// A question's name, lower case, its labels joined as they are (no escapes).
fn text_of(n: &Name) -> String {
    let labels: Vec<String> = n
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

fn wire(r: &Record) -> Option<WireRecord> {
    let data = match &r.data {
        Data::A(ip) => RData::A(A(*ip)),
        Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name_of(target)?)),
        Data::Cname(t) => RData::CNAME(CNAME(name_of(t)?)),
        Data::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
    };
    Some(WireRecord::from_rdata(name_of(&r.name)?, r.ttl_s, data))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        let builder = MessageResponseBuilder::from_message_request(request);
        let info = match request.request_info() {
            Ok(info) if request.op_code() == OpCode::Query => info,
            _ => {
                let msg = builder.error_msg(request.header(), ResponseCode::FormErr);
                return send(&mut response, msg).await;
            }
        };
        let q = Question {
            name: text_of(info.query.name()),
            qtype: qtype_of(info.query.query_type()),
        };
        let (rcode, answers, additional) = match self.resolver.resolve(&q) {
            Reply::Answer {
                answers,
                additional,
            } => {
                header.set_authoritative(true);
                let answers: Vec<_> = answers.iter().filter_map(wire).collect();
                let additional: Vec<_> = additional.iter().filter_map(wire).collect();
                (ResponseCode::NoError, answers, additional)
            }
            Reply::NxDomain => {
                header.set_authoritative(true);
                (ResponseCode::NXDomain, vec![], vec![])
            }
            Reply::Forward => {
                header.set_recursion_available(!self.upstreams.is_empty());
                match forward(&self.upstreams, info.query.original().clone()).await {
                    Some(mut m) => (m.response_code(), m.take_answers(), m.take_additionals()),
                    None => (ResponseCode::Refused, vec![], vec![]),
                }
            }
        };
        header.set_response_code(rcode);
        let msg = builder.build(header, answers.iter(), [], [], additional.iter());
        send(&mut response, msg).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a WireRecord> + Send + 'a,
        impl Iterator<Item = &'a WireRecord> + Send + 'a,
        impl Iterator<Item = &'a WireRecord> + Send + 'a,
        impl Iterator<Item = &'a WireRecord> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("dns: reply not sent: {e}");
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

/// Asks the upstreams in turn over UDP; the first answer wins. `None`: no upstream, or
/// none answered in time.
async fn forward(upstreams: &[SocketAddr], query: Query) -> Option<Message> {
    let mut m = Message::new();
    m.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(query);
    let bytes = m.to_vec().ok()?;
    for up in upstreams.iter().take(FORWARD_TRIES_MAX) {
        let ask = exchange(*up, &bytes, m.id());
        match tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), ask).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => tracing::debug!("dns: upstream {up}: {e}"),
            Err(_) => tracing::debug!("dns: upstream {up} did not answer in time"),
        }
    }
    None
}

async fn exchange(up: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A datagram that is not the answer to this question is someone else's: skip it.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.id() == id => return Ok(m),
            _ => continue,
        }
    }
}

/// Asks `server` one question over UDP (for tests, benchmarks and `flotilla net status`).
pub async fn query(server: SocketAddr, name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let name = name_of(name).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad name {name}"))
    })?;
    let mut m = Message::new();
    m.set_id(rand::random())
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    let bytes = m
        .to_vec()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    exchange(server, &bytes, m.id()).await
}

/// hickory's protocol types, for tests and benchmarks that read answers.
pub use hickory_server::proto;
pub use hickory_server::proto::rr::RecordType as WireType;
