//! Which protocol a connection speaks, decided by the client's first bytes: the HTTP/2 preface
//! makes it HTTP/2, anything else HTTP/1.x.
//!
//! Holds at most the preface's 24 client bytes and [`MAX_HELD_SERVER_BYTES`] of the server's
//! (an HTTP/2 server may send its SETTINGS before it has read the preface) until it knows, then
//! replays them into the chosen parser. Never decides on anything but the preface.

use super::super::connection::{Connection, Ctx};
use super::super::{ExchangeSelector, OpenRequest, Releasable, RequestBody};
use super::H2Connection;
use super::frame::PREFACE;
use crate::shared::model::{ConnectionId, Direction, Endpoint, Timestamp};

/// Server bytes held while the client's first bytes are awaited; past this it is HTTP/1.x.
const MAX_HELD_SERVER_BYTES: usize = 16 * 1024;

/// A connection before its protocol is known.
pub(crate) struct Undecided {
    id: ConnectionId,
    client: Endpoint,
    server: Endpoint,
    /// How many of the client's bytes so far, all equal to the preface's first bytes.
    preface_seen: usize,
    ts_client: Timestamp,
    server_held: Vec<u8>,
    ts_server: Timestamp,
}

/// One tracked connection, by protocol. HTTP/1.x stays inline, as it was before HTTP/2: it is
/// nearly every connection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Session<B> {
    Undecided(Box<Undecided>),
    Http1(Connection<B>),
    Http2(Box<H2Connection<B>>),
}

impl<B: RequestBody> Session<B> {
    /// Heap this connection's parsing state holds (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Session::Undecided(u) => std::mem::size_of::<Undecided>() + u.server_held.capacity(),
            Session::Http1(c) => c.held_bytes(),
            Session::Http2(c) => std::mem::size_of::<H2Connection<B>>() + c.held_bytes(),
        }
    }

    /// The connection's client and server.
    pub(crate) fn endpoints(&self) -> (Endpoint, Endpoint) {
        match self {
            Session::Undecided(u) => (u.client, u.server),
            Session::Http1(c) => (c.client(), c.server()),
            Session::Http2(c) => c.endpoints(),
        }
    }

    pub(crate) fn new(id: ConnectionId, client: Endpoint, server: Endpoint) -> Self {
        Session::Undecided(Box::new(Undecided {
            id,
            client,
            server,
            preface_seen: 0,
            ts_client: Timestamp(0),
            server_held: Vec::new(),
            ts_server: Timestamp(0),
        }))
    }

    /// Whether nothing is worth reading until the client's next request (see
    /// [`Connection::release_point`]). HTTP/1.x only: an HTTP/2 connection multiplexes its
    /// requests, so it is never released.
    pub(crate) fn releasable(&self) -> Option<Releasable> {
        match self {
            Session::Http1(c) => c.release_point().map(|client_remaining| Releasable {
                client: c.client(),
                server: c.server(),
                client_remaining,
            }),
            Session::Undecided(_) | Session::Http2(_) => None,
        }
    }

    pub(crate) fn open_requests(&self, out: &mut Vec<OpenRequest>) {
        match self {
            Session::Undecided(_) => {}
            Session::Http1(c) => c.open_requests(out),
            Session::Http2(c) => c.open_requests(out),
        }
    }

    pub(crate) fn oldest_open_exchange(&self) -> Option<Timestamp> {
        match self {
            Session::Undecided(_) => None,
            Session::Http1(c) => c.oldest_open_exchange(),
            Session::Http2(c) => c.oldest_open_exchange(),
        }
    }

    pub(crate) fn on_data<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        ts: Timestamp,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        let rest = match self {
            Session::Http1(c) => {
                c.on_data(dir, ts, bytes, ctx);
                if let Some(server_bytes) = c.take_h2c_switch() {
                    self.switch_to_h2c(ts, &server_bytes, ctx);
                }
                return;
            }
            Session::Http2(c) => return c.on_data(dir, ts, bytes, ctx),
            Session::Undecided(u) => match dir {
                Direction::ServerToClient => {
                    if u.server_held.len() + bytes.len() <= MAX_HELD_SERVER_BYTES {
                        if u.server_held.is_empty() {
                            u.ts_server = ts;
                        }
                        u.server_held.extend_from_slice(bytes);
                        return;
                    }
                    self.decide(false, ctx);
                    return self.on_data(dir, ts, bytes, ctx);
                }
                Direction::ClientToServer => {
                    let expected = PREFACE.get(u.preface_seen..).unwrap_or_default();
                    let n = expected.len().min(bytes.len());
                    if bytes.get(..n) != expected.get(..n) {
                        self.decide(false, ctx);
                        return self.on_data(dir, ts, bytes, ctx);
                    }
                    if u.preface_seen == 0 {
                        u.ts_client = ts;
                    }
                    u.preface_seen += n;
                    if u.preface_seen < PREFACE.len() {
                        return;
                    }
                    bytes.get(n..).unwrap_or_default()
                }
            },
        };
        self.decide(true, ctx);
        if !rest.is_empty() {
            self.on_data(Direction::ClientToServer, ts, rest, ctx);
        }
    }

    pub(crate) fn on_gap<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        ts: Timestamp,
        len: u64,
        ctx: &mut Ctx<'_, S>,
    ) {
        if matches!(self, Session::Undecided(_)) {
            self.decide(false, ctx);
        }
        match self {
            Session::Undecided(_) => {}
            Session::Http1(c) => c.on_gap(dir, ts, len, ctx),
            Session::Http2(c) => c.on_gap(dir, len, ctx),
        }
    }

    pub(crate) fn close<S: ExchangeSelector<Body = B>>(mut self, ctx: &mut Ctx<'_, S>) {
        if matches!(self, Session::Undecided(_)) {
            self.decide(false, ctx);
        }
        match self {
            Session::Undecided(_) => {}
            Session::Http1(c) => c.close(ctx),
            Session::Http2(c) => c.close(ctx),
        }
    }

    /// An HTTP/1.x connection answered 101 to `Upgrade: h2c`: what it owes is emitted, and it
    /// is read afresh, as HTTP/2 once the client sends the preface (RFC 9113 §3.2 has the
    /// client send it after the 101), starting with the server's bytes after the 101.
    fn switch_to_h2c<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        server_bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        let Session::Http1(c) = self else {
            return;
        };
        let fresh = Session::new(c.id(), c.client(), c.server());
        if let Session::Http1(old) = std::mem::replace(self, fresh) {
            old.close(ctx);
        }
        if !server_bytes.is_empty() {
            self.on_data(Direction::ServerToClient, ts, server_bytes, ctx);
        }
    }

    /// Becomes HTTP/2 or HTTP/1.x, replaying the bytes held so far (the server's first: they
    /// came first). The preface itself is not replayed into HTTP/2: it carries nothing.
    fn decide<S: ExchangeSelector<Body = B>>(&mut self, http2: bool, ctx: &mut Ctx<'_, S>) {
        let Session::Undecided(u) = self else {
            return;
        };
        let (id, client, server) = (u.id, u.client, u.server);
        let (preface_seen, ts_client) = (u.preface_seen, u.ts_client);
        let (server_held, ts_server) = (std::mem::take(&mut u.server_held), u.ts_server);
        *self = if http2 {
            ctx.stats.h2_connections += 1;
            Session::Http2(Box::new(H2Connection::new(
                id,
                client,
                server,
                ctx.limits.max_head_bytes,
            )))
        } else {
            Session::Http1(Connection::new(id, client, server))
        };
        if !server_held.is_empty() {
            self.on_data(Direction::ServerToClient, ts_server, &server_held, ctx);
        }
        if !http2 && preface_seen > 0 {
            let held = PREFACE.get(..preface_seen).unwrap_or_default();
            self.on_data(Direction::ClientToServer, ts_client, held, ctx);
        }
    }
}
