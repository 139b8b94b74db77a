//! L7 proxying: HTTP/1.1 (RFC 9112) over connections terminated by the stack.
#![forbid(unsafe_code)]
