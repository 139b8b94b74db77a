//! HTTP/1.1 message framing (RFC 9112 sections 6 and 7): how long a body is,
//! strict checks against ambiguous framing (the request smuggling classes), a
//! chunked-coding scanner that finds where a message ends without rewriting it,
//! and the responses the proxy writes itself.

/// How the body of a message is delimited (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a request was refused before reaching a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Unparsable request line or header (400).
    Malformed,
    /// Both Content-Length and Transfer-Encoding (400).
    ContentLengthAndTransferEncoding,
    /// Content-Length repeated, or not a decimal number (400).
    BadContentLength,
    /// A transfer coding we do not apply before a final `chunked` (501,
    /// RFC 9112 6.1).
    UnsupportedTransferEncoding,
    /// HTTP/1.1 without exactly one Host header (400).
    BadHost,
    /// Request head larger than the limit (431).
    HeadTooLarge,
    /// A chunk size line that is not hex, a malformed chunk extension, or a
    /// chunk not followed by CRLF (400).
    BadChunk,
    /// No route matches (404).
    NoRoute,
    /// Transfer-Encoding in an HTTP/1.0 request: its framing is faulty
    /// (RFC 9112 6.1) (400).
    Http10TransferEncoding,
    /// An HTTP version other than 1.0 and 1.1 (505).
    BadVersion,
    /// Request line longer than the limit (414).
    RequestLineTooLong,
    /// Chunk extensions longer than [`MAX_CHUNK_EXT`] on one chunk (400).
    ExtensionTooLong,
    /// Transfer-Encoding whose final coding is not `chunked`, or with
    /// `chunked` more than once, over all its fields (`xchunked`,
    /// `chunked, identity`, two fields): the length cannot be known (400,
    /// RFC 9112 6.3 item 4, and 7.1).
    TransferEncodingNotChunked,
    /// A request target in absolute form whose authority is empty or not a
    /// valid host (400, RFC 9112 3.2.2, RFC 9110 4.2.1).
    BadTarget,
}

impl Reject {
    /// Every reason, in [`Reject::index`] order.
    pub const ALL: [Reject; 14] = [
        Reject::Malformed,
        Reject::ContentLengthAndTransferEncoding,
        Reject::BadContentLength,
        Reject::UnsupportedTransferEncoding,
        Reject::BadHost,
        Reject::HeadTooLarge,
        Reject::BadChunk,
        Reject::NoRoute,
        Reject::Http10TransferEncoding,
        Reject::BadVersion,
        Reject::RequestLineTooLong,
        Reject::ExtensionTooLong,
        Reject::TransferEncodingNotChunked,
        Reject::BadTarget,
    ];

    /// The status code and reason phrase to answer with.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Reject::UnsupportedTransferEncoding => (501, "Not Implemented"),
            Reject::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Reject::NoRoute => (404, "Not Found"),
            Reject::BadVersion => (505, "HTTP Version Not Supported"),
            Reject::RequestLineTooLong => (414, "URI Too Long"),
            _ => (400, "Bad Request"),
        }
    }

    /// Position in [`Reject::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::ContentLengthAndTransferEncoding => "cl_and_te",
            Reject::BadContentLength => "bad_content_length",
            Reject::UnsupportedTransferEncoding => "unsupported_te",
            Reject::BadHost => "bad_host",
            Reject::HeadTooLarge => "head_too_large",
            Reject::BadChunk => "bad_chunk",
            Reject::NoRoute => "no_route",
            Reject::Http10TransferEncoding => "http10_te",
            Reject::BadVersion => "bad_version",
            Reject::RequestLineTooLong => "request_line_too_long",
            Reject::ExtensionTooLong => "chunk_ext_too_long",
            Reject::TransferEncodingNotChunked => "te_not_chunked",
            Reject::BadTarget => "bad_target",
        }
    }
}

/// What the proxy needs from a parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// The body's framing.
    pub framing: Framing,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// A HEAD request (its response has no body).
    pub head: bool,
    /// The client asks to switch protocols (`Connection: upgrade` and an
    /// `Upgrade` other than `h2c`, RFC 9110 7.8), e.g. to WebSocket.
    pub upgrade: bool,
}

/// Checks a parsed request head and works out its framing (RFC 9112 6.1–6.3).
pub fn check_request(req: &httparse::Request<'_, '_>) -> Result<RequestInfo, Reject> {
    let version = req.version.ok_or(Reject::Malformed)?;
    let mut content_length: Option<u64> = None;
    // Transfer-Encoding over all its fields, as one list (RFC 9110 5.3).
    let mut te = false;
    let mut te_chunked = 0usize;
    let mut te_last_chunked = false;
    let mut te_other = false;
    let mut hosts = 0;
    let mut close = version == 0;
    let mut conn_upgrade = false;
    let mut upgrade_to: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::BadContentLength);
            }
            content_length = Some(parse_decimal(h.value).ok_or(Reject::BadContentLength)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            for coding in codings(h.value) {
                te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                te_chunked += usize::from(te_last_chunked);
                te_other |= !te_last_chunked;
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(h.value) {
                return Err(Reject::BadHost);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    conn_upgrade = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_to = Some(trim(h.value));
        }
    }
    if version == 1 && hosts != 1 {
        return Err(Reject::BadHost);
    }
    let framing = match (te, content_length) {
        (true, Some(_)) => return Err(Reject::ContentLengthAndTransferEncoding),
        (true, None) if version == 0 => return Err(Reject::Http10TransferEncoding),
        (true, None) if !te_last_chunked || te_chunked > 1 => {
            return Err(Reject::TransferEncodingNotChunked);
        }
        (true, None) if te_other => return Err(Reject::UnsupportedTransferEncoding),
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    // h2c upgrades are hop-by-hop: answered (or not) by the proxy, never
    // passed on.
    let upgrade = version == 1
        && conn_upgrade
        && upgrade_to.is_some_and(|u| !u.is_empty() && !u.eq_ignore_ascii_case(b"h2c"));
    Ok(RequestInfo { framing, keep_alive: !close, head: req.method == Some("HEAD"), upgrade })
}

/// A request target for routing and forwarding (RFC 9112 3.2): in absolute
/// form (`http://host:8080/path?q`, scheme in any case) its authority, which
/// replaces Host (3.2.2), and what follows it; in any other form (origin,
/// `*`, a CONNECT authority) no authority and the target as it is. Only a
/// target that starts with the scheme is absolute: a `://` in a path or
/// query is just bytes.
pub fn split_target(target: &str) -> Result<(Option<&str>, &str), Reject> {
    let b = target.as_bytes();
    let rest = if b.get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"http://")) {
        &target[7..]
    } else if b.get(..8).is_some_and(|p| p.eq_ignore_ascii_case(b"https://")) {
        &target[8..]
    } else {
        return Ok((None, target));
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // No userinfo (RFC 9110 4.2.4): `@` is not in a valid host.
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return Err(Reject::BadTarget);
    }
    Ok((Some(authority), path))
}

/// What the proxy needs from a parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseInfo {
    /// Status code.
    pub status: u16,
    /// The body's framing.
    pub framing: Framing,
    /// The backend will keep the connection open.
    pub keep_alive: bool,
}

/// The response head as relayed to the client: HTTP/1.1 status line, the
/// upstream's headers minus its connection-specific ones (RFC 9110 7.6.1:
/// `Connection`, the headers it names, `Keep-Alive`, `Proxy-Connection`)
/// and, when Transfer-Encoding is there too, Content-Length (RFC 9112 6.3
/// item 3); plus `Connection: close` when the client connection ends after
/// this response. The upstream connection's keep-alive is not the client's.
/// A route's `set` headers replace the backend's of the same name, its
/// `add` ones come after the backend's, and its `remove` ones are dropped. `upgrade`: a 101 switching the client's
/// connection, which keeps `Upgrade` and says `Connection: Upgrade`.
/// Written to `h`, which is cleared first.
pub fn client_response_head(
    resp: &httparse::Response<'_, '_>,
    client_keep: bool,
    set: &[(String, String)],
    remove: &[String],
    add: &[(String, String)],
    upgrade: bool,
    h: &mut Vec<u8>,
) {
    // httparse reads exactly three digits.
    let code = resp.code.unwrap_or(502).min(999);
    h.clear();
    h.extend_from_slice(b"HTTP/1.1 ");
    h.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    h.push(b' ');
    h.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    h.extend_from_slice(b"\r\n");
    // Headers the backend's Connection names (no list kept: a response
    // allocates nothing here).
    let has_connection = resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case("connection"));
    let named = |n: &str| {
        has_connection
            && resp
                .headers
                .iter()
                .filter(|x| x.name.eq_ignore_ascii_case("connection"))
                .flat_map(|x| x.value.split(|b| *b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(n.as_bytes()))
    };
    let te = resp.headers.iter().any(|x| x.name.eq_ignore_ascii_case("transfer-encoding"));
    for x in resp.headers.iter() {
        let n = x.name;
        let hop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h))
            || (te && n.eq_ignore_ascii_case("content-length"))
            || (named(n) && !(upgrade && n.eq_ignore_ascii_case("upgrade")))
            || remove.iter().any(|r| r.eq_ignore_ascii_case(n))
            || set.iter().any(|(r, _)| r.eq_ignore_ascii_case(n));
        if hop {
            continue;
        }
        h.extend_from_slice(n.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(x.value);
        h.extend_from_slice(b"\r\n");
    }
    if code >= 200 {
        for (n, v) in set.iter().chain(add) {
            h.extend_from_slice(n.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
    }
    if upgrade {
        h.extend_from_slice(b"Connection: Upgrade\r\n");
    } else if !client_keep && code >= 200 {
        h.extend_from_slice(b"Connection: close\r\n");
    }
    h.extend_from_slice(b"\r\n");
}

/// Works out a response's framing (RFC 9112 6.3), given whether the request
/// was HEAD. A response the proxy cannot frame safely is an error (502).
pub fn check_response(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<ResponseInfo, Reject> {
    let version = resp.version.ok_or(Reject::Malformed)?;
    let status = resp.code.ok_or(Reject::Malformed)?;
    let mut content_length: Option<u64> = None;
    // Transfer-Encoding over all its fields; chunked if that is the last.
    let mut te: Option<bool> = None;
    let mut close = version == 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_decimal(h.value).ok_or(Reject::BadContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Reject::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in codings(h.value) {
                te = Some(coding.eq_ignore_ascii_case(b"chunked"));
            }
            te.get_or_insert(false);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else {
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3 item 3),
        // which `client_response_head` then does not pass on.
        match (te, content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let keep_alive = !close && framing != Framing::UntilClose;
    Ok(ResponseInfo { status, framing, keep_alive })
}

/// A Host field value (RFC 9110 7.2, RFC 3986 3.2.2): a reg-name, an IPv4
/// address or a bracketed IPv6 literal, optionally `:port`. Empty is allowed
/// (a request target without an authority).
fn valid_host(v: &[u8]) -> bool {
    let v = trim(v);
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// The transfer codings a Transfer-Encoding field lists, in order,
/// trimmed, empty list elements skipped (RFC 9110 5.6.1).
fn codings(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(trim).filter(|c| !c.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Finds the end of a chunked body (RFC 9112 7.1) as bytes stream past, without
/// changing them: chunk sizes, extensions, data, and the trailer section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
    ext_len: u16,
}

/// Most bytes of chunk extensions accepted on one chunk-size line; more is a
/// resource attack, not a real client.
pub const MAX_CHUNK_EXT: u16 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    /// Whitespace after the size: only `;` may follow.
    ExtStart,
    /// After `;`: whitespace, then an extension's name (a token).
    ExtPreName,
    ExtName,
    /// Whitespace after a name: `=`, `;` or the line's end.
    ExtPostName,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtPreValue,
    ExtToken,
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedEscape,
    /// After a value: whitespace, `;` or the line's end.
    ExtPostValue,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner { state: ChunkState::Size, size: 0, digits: 0, ext_len: 0 }
    }
}

/// A token character (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl ChunkScanner {
    /// The state after byte `b` of a chunk extension (see `scan`).
    fn ext_byte(&self, b: u8) -> Result<ChunkState, Reject> {
        use ChunkState::*;
        let ws = b == b' ' || b == b'\t';
        Ok(match (self.state, b) {
            (ExtPreName | ExtPreValue | ExtPostName | ExtPostValue, _) if ws => self.state,
            (ExtPreName | ExtName, b) if is_tchar(b) => ExtName,
            (ExtName, _) if ws => ExtPostName,
            (ExtName | ExtPostName, b'=') => ExtPreValue,
            (ExtName | ExtPostName | ExtToken | ExtPostValue, b';') => ExtPreName,
            (ExtName | ExtPostName | ExtToken | ExtPostValue, b'\r') => SizeLf,
            (ExtPreValue, b'"') => ExtQuoted,
            (ExtPreValue | ExtToken, b) if is_tchar(b) => ExtToken,
            (ExtToken, _) if ws => ExtPostValue,
            (ExtQuoted, b'"') => ExtPostValue,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            // qdtext and quoted-pair: whitespace, visible characters, obs-text.
            (ExtQuoted | ExtQuotedEscape, b'\t' | b' '..=b'~' | 0x80..=0xff) => ExtQuoted,
            _ => return Err(Reject::BadChunk),
        })
    }

    /// True once the last chunk and the trailer section have passed.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `data`; returns how many bytes belong to the body (all of them
    /// unless the body ends inside `data`).
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, Reject> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(Reject::BadChunk);
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' if self.digits > 0 => {
                        self.ext_len = 0;
                        self.state = ChunkState::ExtPreName;
                    }
                    b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::ExtStart,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(Reject::BadChunk),
                },
                // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
                // ext-name a token, ext-val a token or a quoted string (RFC
                // 9112 7.1.1, RFC 9110 5.6): anything else (an empty name,
                // a stray quote, a control) is refused, as a backend that
                // reads the grammar differently is how requests get smuggled.
                // Whitespace before the line's end is let pass.
                ChunkState::ExtStart => match b {
                    b' ' | b'\t' => {}
                    b';' => {
                        self.ext_len = 0;
                        self.state = ChunkState::ExtPreName;
                    }
                    _ => return Err(Reject::BadChunk),
                },
                ChunkState::ExtPreName
                | ChunkState::ExtName
                | ChunkState::ExtPostName
                | ChunkState::ExtPreValue
                | ChunkState::ExtToken
                | ChunkState::ExtQuoted
                | ChunkState::ExtQuotedEscape
                | ChunkState::ExtPostValue => {
                    if b != b'\r' {
                        self.ext_len += 1;
                        if self.ext_len > MAX_CHUNK_EXT {
                            return Err(Reject::ExtensionTooLong);
                        }
                    }
                    self.state = self.ext_byte(b)?;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(Reject::BadChunk);
                    }
                    self.digits = 0;
                    self.state =
                        if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
                }
                ChunkState::Data => {
                    let take = (self.size.min((data.len() - i) as u64)) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Reject::BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Reject::BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                // A trailer field line is a header field line (RFC 9112 7.1.2,
                // 5): a token, a colon, a value; no obsolete line folding
                // (a line starting with whitespace), no space before the
                // colon, no controls.
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::FinalLf,
                    b if is_tchar(b) => self.state = ChunkState::TrailerName,
                    _ => return Err(Reject::BadChunk),
                },
                ChunkState::TrailerName => match b {
                    b':' => self.state = ChunkState::TrailerLine,
                    b if is_tchar(b) => {}
                    _ => return Err(Reject::BadChunk),
                },
                ChunkState::TrailerLine => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(Reject::BadChunk),
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(Reject::BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(Reject::BadChunk);
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

/// The reason phrase of a status code (RFC 9110 section 15).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete response written by the proxy itself, closing the connection.
pub fn error_response(status: u16, reason: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    let body_len = reason.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: close\r\nServer: switchyard\r\n\r\n{reason}\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[u8]) -> Result<RequestInfo, Reject> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut h);
        match r.parse(raw) {
            Ok(httparse::Status::Complete(_)) => check_request(&r),
            _ => Err(Reject::Malformed),
        }
    }

    #[test]
    fn framing_of_requests() {
        assert_eq!(req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().framing, Framing::None);
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap().framing,
            Framing::Length(5)
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .framing,
            Framing::Chunked
        );
        assert!(
            !req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap().keep_alive
        );
        assert!(!req(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        use Reject::*;
        let cases: &[(&[u8], Reject)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", TransferEncodingNotChunked),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Http10TransferEncoding),
            (b"GET / HTTP/1.1\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", Malformed),
            (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", Malformed),
        ];
        for (raw, want) in cases {
            assert_eq!(req(raw), Err(*want), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn reject_reasons_are_indexed_in_order() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn chunk_scanner_finds_the_end_and_refuses_bad_sizes() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /next";
        let mut s = ChunkScanner::default();
        let n = s.scan(body).unwrap();
        assert!(s.done());
        assert_eq!(&body[n..], b"GET /next");
        // Byte by byte gives the same answer.
        let mut s = ChunkScanner::default();
        let mut total = 0;
        for b in body.iter() {
            total += s.scan(std::slice::from_ref(b)).unwrap();
            if s.done() {
                break;
            }
        }
        assert_eq!(total, n);
        for bad in [
            &b"z\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\n",
            b"fffffffffffffffff\r\n",
            b"5 x\r\n",
            b"5;a\x00\r\n",
            b"5;a\nhello",
            b"5;\r\n",
            b"5;=b\r\n",
            b"5;a=\r\n",
            b"5;a=\"b\r\n",
            b"5;a=b\"\r\n",
            b"5;a b\r\n",
            b"5;a=b c\r\n",
            b"5;a=\"\x01\"\r\n",
            b"5;a@=b\r\n",
            b"0\r\n X: folded\r\n",
            b"0\r\nX : y\r\n",
            b"0\r\nno colon\r\n",
        ] {
            assert_eq!(ChunkScanner::default().scan(bad), Err(Reject::BadChunk), "{bad:?}");
        }
        // What the grammar allows: whitespace around `;` and `=`, several
        // extensions, quoted strings with escapes and `;` inside.
        for good in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ; a = b ; c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x; \\\"y\\\\\";b=tok-en.1\r\nhello\r\n0\r\n\r\n",
            b"5;a=b \r\nhello\r\n0\r\nX-T: 1\r\nY:\r\n\r\n",
        ] {
            let mut s = ChunkScanner::default();
            assert_eq!(s.scan(good), Ok(good.len()), "{:?}", String::from_utf8_lossy(good));
            assert!(s.done());
        }
    }
}
