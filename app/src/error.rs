//! The one error type the browser ever sees. Every variant is safe to show: the server maps its
//! internal errors to these in one place (`server::portal_backend`) and logs the cause there.

use leptos::server_fn::{
    codec::JsonEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

/// A user-facing failure of a portal operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// Input failed validation; `field` names the form field. Fix the input and retry.
    #[error("{message}")]
    InvalidInput {
        /// Form field name (`username`, `password`).
        field: String,
        /// What is wrong with it, in plain words.
        message: String,
    },
    /// The RADIUS server rejected the credentials; `message` is its Reply-Message, if any.
    #[error("{}", rejected_text(.message))]
    Rejected {
        /// Reply-Message attribute(s) from the Access-Reject.
        message: Option<String>,
    },
    /// The organization is disabled (or unknown): nothing was sent to RADIUS.
    #[error("This organization is disabled. Please contact your network administrator.")]
    OrganizationDisabled,
    /// No RADIUS server of the organization answered in time. Retry later.
    #[error(
        "The authentication servers cannot be reached right now. Please try again in a minute."
    )]
    ServersUnavailable,
    /// Too many login attempts from this address or for this username: wait and retry.
    #[error("Too many sign-in attempts. Please wait {retry_after_secs} seconds and try again.")]
    RateLimited {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// The web session holds no active access session (expired, disconnected or never opened).
    #[error("You have no active session. Please sign in.")]
    NoSession,
    /// The request was refused as cross-site or without a valid form token.
    #[error("This request was refused for your security. Please reload the page and try again.")]
    Forbidden,
    /// Anything else; the server logged the cause. Retry.
    #[error("Something went wrong on our side. Please try again.")]
    Internal,
    /// The browser could not reach the server or decode its answer (detail kept for debugging).
    #[error("The portal could not be reached. Please check your connection and try again.")]
    Communication(String),
}

fn rejected_text(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.trim().is_empty() => format!("Sign-in refused: {}", m.trim()),
        _ => "Sign-in refused: wrong username or password.".to_string(),
    }
}

impl FromServerFnError for PortalError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // The server could not read the request's fields (missing, unknown, not text):
            // the caller's mistake, said plainly (serde names the field).
            ServerFnErrorErr::Args(detail) => PortalError::InvalidInput {
                field: "request".into(),
                message: format!(
                    "The request could not be read: {}",
                    detail.chars().take(200).collect::<String>()
                ),
            },
            other => PortalError::Communication(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_shows_the_servers_reply_message() {
        let e = PortalError::Rejected {
            message: Some("Account locked".into()),
        };
        assert_eq!(e.to_string(), "Sign-in refused: Account locked");
    }

    #[test]
    fn rejection_without_reply_message_says_credentials_are_wrong() {
        let e = PortalError::Rejected { message: None };
        assert!(e.to_string().contains("wrong username or password"));
    }

    #[test]
    fn communication_detail_is_not_shown_to_the_user() {
        let e = PortalError::Communication("connection reset by 10.0.0.1".into());
        assert!(!e.to_string().contains("10.0.0.1"));
    }
}
