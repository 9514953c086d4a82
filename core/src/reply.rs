//! AMQP reply codes and the (code, text) pair carried by `Connection.Close` and
//! `Channel.Close`.

use std::fmt;

/// Normal close.
pub const REPLY_SUCCESS: u16 = 200;
/// The connection was closed by an operator or by the proxy on behalf of the broker.
pub const CONNECTION_FORCED: u16 = 320;
/// Login refused.
pub const ACCESS_REFUSED: u16 = 403;
/// Entity missing (channel-level).
pub const NOT_FOUND: u16 = 404;
/// Entity locked by another connection (channel-level).
pub const RESOURCE_LOCKED: u16 = 405;
/// Precondition failed (channel-level), also used for oversized messages.
pub const PRECONDITION_FAILED: u16 = 406;
/// Malformed frame.
pub const FRAME_ERROR: u16 = 501;
/// Malformed method arguments.
pub const SYNTAX_ERROR: u16 = 502;
/// A method that is not valid here.
pub const COMMAND_INVALID: u16 = 503;
/// A frame on a channel that is not open, or a second open.
pub const CHANNEL_ERROR: u16 = 504;
/// A frame out of sequence (content without a method, a method inside content).
pub const UNEXPECTED_FRAME: u16 = 505;
/// Out of resources.
pub const RESOURCE_ERROR: u16 = 506;
/// Not allowed (vhost access, limits).
pub const NOT_ALLOWED: u16 = 530;
/// Not implemented.
pub const NOT_IMPLEMENTED: u16 = 540;
/// Internal error.
pub const INTERNAL_ERROR: u16 = 541;

/// The name AMQP gives a reply code, as RabbitMQ prints it in reply texts.
#[must_use]
pub fn code_name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "OK",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// A reply code with its text, as sent in a close method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The AMQP reply code.
    pub code: u16,
    /// Human-readable text; RabbitMQ style is `"NAME - detail"`.
    pub text: String,
    /// The method that caused the error, `(0, 0)` when none.
    pub class_method: (u16, u16),
}

impl Reply {
    /// A reply whose text is `"NAME - detail"`, RabbitMQ's format — cut as RabbitMQ cuts a
    /// text too long for a short string: its first 252 bytes and `...`.
    #[must_use]
    pub fn new(code: u16, detail: impl fmt::Display) -> Reply {
        let mut text = format!("{} - {}", code_name(code), detail);
        if text.len() > 255 {
            let mut cut = 252;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        Reply {
            code,
            text,
            class_method: (0, 0),
        }
    }

    /// A reply with a text used verbatim (for example one received from the broker).
    #[must_use]
    pub fn verbatim(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            text: text.into(),
            class_method: (0, 0),
        }
    }

    /// The text without its `"NAME - "` prefix, to say the same under another code.
    #[must_use]
    pub fn detail(&self) -> &str {
        let prefix = code_name(self.code);
        self.text
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix(" - "))
            .unwrap_or(&self.text)
    }

    /// Records the method that caused the error.
    #[must_use]
    pub fn caused_by(mut self, id: crate::spec::MethodId) -> Reply {
        self.class_method = (id.class, id.method);
        self
    }

    /// Whether the broker refused the login itself (bad credentials, or a vhost the user may
    /// not open), as opposed to the broker being unreachable or going away: only the first
    /// says something about the credentials, and nothing about the node that answered.
    #[must_use]
    pub fn refuses_login(&self) -> bool {
        matches!(self.code, ACCESS_REFUSED | NOT_ALLOWED)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Bytes as RabbitMQ prints them in its reply texts (Erlang's `~p` of a binary):
/// `<<"text">>` when every byte is printable, else `<<0,60,255>>`. Frame errors quote the
/// offending payload this way, and a client must read the same text through warren.
#[must_use]
pub fn erlang_binary(bytes: &[u8]) -> String {
    let escaped = |b: u8| match b {
        b'"' => Some("\\\"".to_owned()),
        b'\\' => Some("\\\\".to_owned()),
        b'\n' => Some("\\n".to_owned()),
        b'\r' => Some("\\r".to_owned()),
        b'\t' => Some("\\t".to_owned()),
        0x0b => Some("\\v".to_owned()),
        0x08 => Some("\\b".to_owned()),
        0x0c => Some("\\f".to_owned()),
        0x1b => Some("\\e".to_owned()),
        32..=126 => Some(char::from(b).to_string()),
        _ => None,
    };
    if bytes.is_empty() {
        return "<<>>".to_owned();
    }
    // The text is cut at 255 bytes anyway; a whole frame need not be printed first.
    let bytes = &bytes[..bytes.len().min(256)];
    match bytes
        .iter()
        .map(|&b| escaped(b))
        .collect::<Option<String>>()
    {
        Some(text) => format!("<<\"{text}\">>"),
        None => {
            let numbers: Vec<String> = bytes.iter().map(u8::to_string).collect();
            format!("<<{}>>", numbers.join(","))
        }
    }
}

/// RabbitMQ's refusal of a frame it cannot place (given its type octet and payload): a
/// content frame on channel 0, a heartbeat on another channel or any frame on a channel
/// during the handshake is 505, a heartbeat with a payload 501 — each quoting the frame.
#[must_use]
pub fn misplaced_frame(kind: u8, payload: &[u8]) -> Reply {
    let octets = format!("type {kind}, all octets = {}", erlang_binary(payload));
    if kind == 8 && !payload.is_empty() {
        Reply::new(FRAME_ERROR, format!("{octets}: unknown_frame"))
    } else {
        Reply::new(UNEXPECTED_FRAME, octets)
    }
}

/// RabbitMQ's refusal of method arguments it cannot split into fields (too short, or bytes
/// left over).
#[must_use]
pub fn cannot_decode(args: &[u8]) -> Reply {
    Reply::new(
        FRAME_ERROR,
        format!("cannot decode {}", erlang_binary(args)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_printed_as_erlang_prints_a_binary() {
        assert_eq!(erlang_binary(b""), "<<>>");
        assert_eq!(erlang_binary(b"ab"), "<<\"ab\">>");
        assert_eq!(erlang_binary(b"a\"b\n"), "<<\"a\\\"b\\n\">>");
        assert_eq!(erlang_binary(&[0, 0, 0, 10, b'x']), "<<0,0,0,10,120>>");
    }

    #[test]
    fn long_texts_are_cut_as_rabbitmq_cuts_them() {
        let r = Reply::new(RESOURCE_LOCKED, "x".repeat(300));
        assert_eq!(r.text.len(), 255);
        assert!(r.text.starts_with("RESOURCE_LOCKED - xxx"));
        assert!(r.text.ends_with("x..."));
        let short = Reply::new(RESOURCE_LOCKED, "x".repeat(100));
        assert_eq!(short.text.len(), "RESOURCE_LOCKED - ".len() + 100);
        // A cut never splits a character.
        let wide = Reply::new(RESOURCE_LOCKED, "é".repeat(200));
        assert!(wide.text.len() <= 255 && wide.text.ends_with("..."));
    }

    #[test]
    fn said_again_under_another_code_the_prefix_is_not_doubled() {
        let lost = Reply::new(CONNECTION_FORCED, "broker unreachable: timed out");
        assert_eq!(lost.detail(), "broker unreachable: timed out");
        assert_eq!(
            Reply::new(RESOURCE_ERROR, lost.detail()).text,
            "RESOURCE_ERROR - broker unreachable: timed out"
        );
        // A broker text in another form is kept whole.
        let odd = Reply::verbatim(CONNECTION_FORCED, "shutdown");
        assert_eq!(odd.detail(), "shutdown");
    }

    #[test]
    fn only_credential_and_vhost_refusals_refuse_the_login() {
        assert!(Reply::new(ACCESS_REFUSED, "bad password").refuses_login());
        assert!(Reply::new(NOT_ALLOWED, "vhost not found").refuses_login());
        assert!(!Reply::new(CONNECTION_FORCED, "broker unreachable").refuses_login());
        assert!(!Reply::new(FRAME_ERROR, "bad frame").refuses_login());
    }
}
