//! The one classifier of the request path (linkerd's `http/classify` idea): a try to an
//! endpoint ends in exactly one [`Outcome`], and the breaker, outlier detection, the error
//! metrics and the retry decision all read that same outcome. A failure of the client's
//! own body is its own outcome, so nothing the client does counts against an endpoint.

pub use super::body::ClientBodyFault;
use super::outlier::Signal;
use crate::config::resilience::Conditions;

/// How one try to an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status arrived.
    Status(u16),
    /// The connection could not be made (refused, unreachable, connect timeout): nothing
    /// was sent.
    Connect,
    /// No response head within the timeout.
    Timeout,
    /// The connection failed after the request was (or may have been) sent.
    Reset,
    /// The client's request body failed the try (over the route's limit, malformed, or
    /// the client went away mid-body): says nothing about the endpoint.
    ClientBody,
}

impl Outcome {
    /// Whether the endpoint's breaker counts this try as a failure (`failure_on`);
    /// `None`: the try says nothing about the endpoint.
    pub fn breaker_failure(self, on: &Conditions) -> Option<bool> {
        Some(match self {
            Outcome::Status(s) => on.status(s),
            Outcome::Connect => on.connect,
            Outcome::Timeout => on.timeout,
            Outcome::Reset => on.reset,
            Outcome::ClientBody => return None,
        })
    }

    /// What outlier detection counts; `None` for a try that says nothing about the endpoint.
    pub fn outlier_signal(self) -> Option<Signal> {
        Some(match self {
            Outcome::Connect => Signal::Connect,
            Outcome::Status(502..=504) | Outcome::Timeout | Outcome::Reset => Signal::GatewayError,
            Outcome::Status(500..=599) => Signal::Status5xx,
            Outcome::Status(_) => Signal::Ok,
            Outcome::ClientBody => return None,
        })
    }

    /// The `kind` label of `portcullis_upstream_errors_total`, if this try was an error.
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Outcome::Connect => Some(ErrorKind::Connect),
            Outcome::Timeout => Some(ErrorKind::Timeout),
            Outcome::Reset => Some(ErrorKind::Reset),
            Outcome::Status(500..=599) => Some(ErrorKind::Status5xx),
            Outcome::Status(_) | Outcome::ClientBody => None,
        }
    }

    /// Whether the retry policy's `on` conditions ask for another try. A failure before
    /// the request was sent may be retried for any method; after, only an idempotent one.
    pub fn retryable(self, on: &Conditions, idempotent: bool) -> bool {
        match self {
            Outcome::Connect => on.connect,
            Outcome::Timeout => on.timeout && idempotent,
            Outcome::Reset => on.reset && idempotent,
            Outcome::Status(s) => on.status(s) && idempotent,
            Outcome::ClientBody => false,
        }
    }
}

/// The error kinds counted per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Status5xx = 3,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status5xx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// Why a try got no response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TryError {
    #[error("cannot connect to upstream: {0}")]
    ConnectFailed(String),
    #[error("timed out connecting to upstream")]
    ConnectTimeout,
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream failed: {0}")]
    Failed(String),
    /// The client's body passed the route's limit while it streamed.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's body stream failed: malformed framing, or the client went away.
    #[error("request body failed: {0:?}")]
    ClientBody(ClientBodyFault),
}

impl TryError {
    pub fn outcome(&self) -> Outcome {
        match self {
            TryError::ConnectFailed(_) | TryError::ConnectTimeout => Outcome::Connect,
            TryError::Timeout => Outcome::Timeout,
            TryError::Failed(_) => Outcome::Reset,
            TryError::BodyTooLarge | TryError::ClientBody(_) => Outcome::ClientBody,
        }
    }
}

/// Classifies an error of hyper-util's client.
pub fn client_error(err: &hyper_util::client::legacy::Error) -> TryError {
    error(err, err.is_connect())
}

/// Classifies a failed try's error (`upstream::pool`: connecting, the connection's
/// handshake, or sending); `connecting`: no connection was made.
pub fn error(err: &(dyn std::error::Error + 'static), connecting: bool) -> TryError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut timed_out = false;
    while let Some(e) = source {
        if e.is::<super::body::BodyTooLarge>() {
            return TryError::BodyTooLarge;
        }
        if let Some(f) = e.downcast_ref::<super::body::ClientBodyFailed>() {
            return TryError::ClientBody(f.fault);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        source = e.source();
    }
    match (connecting, timed_out) {
        (true, true) => TryError::ConnectTimeout,
        (true, false) => TryError::ConnectFailed(root_cause(err)),
        _ => TryError::Failed(root_cause(err)),
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(connect: bool, timeout: bool, reset: bool, statuses: &[u16]) -> Conditions {
        Conditions {
            connect,
            timeout,
            reset,
            statuses: statuses.to_vec(),
            ..Conditions::default()
        }
    }

    #[test]
    fn a_client_body_failure_counts_against_nothing() {
        let all = conditions(true, true, true, &[500, 502, 503]);
        assert_eq!(Outcome::ClientBody.breaker_failure(&all), None);
        assert_eq!(Outcome::ClientBody.outlier_signal(), None);
        assert_eq!(Outcome::ClientBody.error_kind(), None);
        assert!(!Outcome::ClientBody.retryable(&all, true));
        for e in [
            TryError::BodyTooLarge,
            TryError::ClientBody(ClientBodyFault::Malformed),
            TryError::ClientBody(ClientBodyFault::Gone),
        ] {
            assert_eq!(e.outcome(), Outcome::ClientBody, "{e:?}");
        }
    }

    #[test]
    fn only_a_connect_failure_is_retried_for_any_method() {
        let all = conditions(true, true, true, &[503]);
        assert!(Outcome::Connect.retryable(&all, false));
        for o in [Outcome::Timeout, Outcome::Reset, Outcome::Status(503)] {
            assert!(!o.retryable(&all, false), "{o:?}");
            assert!(o.retryable(&all, true), "{o:?}");
        }
        assert!(!Outcome::Status(500).retryable(&all, true));
    }

    #[test]
    fn gateway_errors_and_other_5xx_are_told_apart() {
        for o in [
            Outcome::Status(502),
            Outcome::Status(504),
            Outcome::Timeout,
            Outcome::Reset,
        ] {
            assert_eq!(o.outlier_signal(), Some(Signal::GatewayError), "{o:?}");
        }
        // A refusal has its own run (and counts as a gateway error too).
        assert_eq!(Outcome::Connect.outlier_signal(), Some(Signal::Connect));
        assert_eq!(
            Outcome::Status(500).outlier_signal(),
            Some(Signal::Status5xx)
        );
        assert_eq!(Outcome::Status(404).outlier_signal(), Some(Signal::Ok));
        assert_eq!(
            Outcome::Status(503).error_kind(),
            Some(ErrorKind::Status5xx)
        );
        assert_eq!(Outcome::Status(429).error_kind(), None);
        let f = conditions(false, false, false, &[429]);
        assert_eq!(Outcome::Status(429).breaker_failure(&f), Some(true));
        assert_eq!(Outcome::Connect.breaker_failure(&f), Some(false));
    }
}
