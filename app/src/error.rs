//! The one error type the browser ever sees. Every variant is safe to show: the server maps its
//! internal errors to these in one place (`server::portal_backend`) and logs the cause there.

use leptos::server_fn::{
    codec::JsonEncoding,
    error::{FromServerFnError, ServerFnErrorErr},
};
use serde::{Deserialize, Serialize};

/// A user-facing failure of a portal operation.
///
/// On the wire (a server fn's error body) it is one JSON object that a script can use without
/// knowing this type: `{"error": "<variant>", "message": "<the sentence shown>", …fields}`,
/// e.g. `{"error":"RateLimited","message":"Too many sign-in attempts. …","retry_after_secs":30}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// The RADIUS server asked for an extra step (Access-Challenge: a second factor, EAP) that
    /// a PAP sign-in form cannot give; `message` is its Reply-Message, if any.
    #[error("{}", challenge_text(.message))]
    ChallengeUnsupported {
        /// Reply-Message attribute(s) from the Access-Challenge.
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
    /// The server accepted the sign-in but the session's Accounting-Start could not be
    /// delivered, so no session was opened (a session nobody accounts for would grant access
    /// the network cannot see). Retry later.
    #[error(
        "Your sign-in was accepted, but the network cannot record sessions right now, so none was opened. Please try again in a minute."
    )]
    AccountingUnavailable,
    /// The portal's database cannot be reached or written right now (a restart, a full disk):
    /// what was asked was not done (a sign-in whose session could be opened but not linked to
    /// the browser had it ended, Stop sent). Retry later.
    #[error("The portal cannot reach its records right now, so this may not have been done. Please try again in a minute.")]
    Unavailable,
    /// The server accepted the sign-in with an answer the portal cannot use (a session length
    /// it cannot read, a service it does not provide, attributes that leave no room for the
    /// session's accounting): no session was opened. Only the server's operator can fix it.
    #[error(
        "Your sign-in was accepted, but the authentication server's answer cannot be used ({problem}). Please tell your network administrator."
    )]
    UnusableAnswer {
        /// What is wrong with the answer (attribute names and values; never a secret).
        problem: String,
    },
    /// The server answered without the Message-Authenticator the portal requires of every
    /// answer (`require_message_authenticator`): its answer — an Accept, a Reject or a
    /// Challenge — cannot be trusted, so it is not read. The server answers; its settings (or
    /// the portal's) need changing, which only an operator can do.
    #[error(
        "The authentication server answered, but without the signature this portal requires (Message-Authenticator), so its answer cannot be trusted and no session was opened. Please tell your network administrator."
    )]
    UnsignedAnswer,
    /// Too many login attempts from this address or for this username: wait and retry.
    #[error("Too many sign-in attempts. Please wait {} and try again.", seconds(.retry_after_secs))]
    RateLimited {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// The web session holds no active access session (expired, disconnected or never opened).
    #[error("You have no active session. Please sign in.")]
    NoSession,
    /// The request was refused as cross-site or without a valid form token.
    #[error("This page was out of date (after signing in or out in another tab, or left open for long), so the request was refused for your security. Please reload the page and try again.")]
    Forbidden,
    /// The request came through a trusted proxy that did not say whose it is, so the portal
    /// cannot tell the client's address (the identity a session is bound to).
    #[error(
        "The portal cannot tell your device's address (the proxy in front of it did not pass it). Please tell your network administrator."
    )]
    AddressUnknown,
    /// Anything else; the server logged the cause, under the request's id, which the user is
    /// shown as the reference to give the operator (the UI review's M1 of session 80: the id
    /// was only in a response header no phone shows). Retry.
    #[error(
        "Something went wrong on our side. Please try again.{}",
        reference_text(reference)
    )]
    Internal {
        /// The failed request's id (`X-Request-Id`, `request{id=…}` in the log).
        reference: Option<String>,
    },
    /// The browser could not reach the server or decode its answer (detail kept for debugging).
    #[error("{UNREACHABLE}")]
    Communication(String),
}

/// What a user reads when the portal cannot be reached or its answer cannot be read (the
/// island shows it too, without this type).
pub const UNREACHABLE: &str =
    "The portal could not be reached. Please check your connection and try again.";

/// What the session page says when its Disconnect got no answer from the portal (not sent, or
/// its answer lost): the session (and the network access with it) may run on, and the message
/// stays until the user acts or the session is seen to end — a user leaving a shared device
/// must not take "connected again" for "signed out".
pub const DISCONNECT_UNREACHABLE: &str = "Your Disconnect could not be confirmed: the portal could not be reached, so your session may still be running. Check your connection and press Disconnect again.";

/// What [`PortalError::Internal`] adds for its reference.
fn reference_text(reference: &Option<String>) -> String {
    match reference {
        Some(id) => {
            format!(" If it happens again, tell your network administrator this reference: {id}.")
        }
        None => String::new(),
    }
}

/// "1 second", "30 seconds".
fn seconds(n: &u64) -> String {
    if *n == 1 {
        "1 second".into()
    } else {
        format!("{n} seconds")
    }
}

fn rejected_text(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.trim().is_empty() => format!("Sign-in refused: {}", m.trim()),
        _ => "Sign-in refused: wrong username or password.".to_string(),
    }
}

/// The server's words ask for something the page has no field for: said as what the server
/// asked, after what the user can do.
fn challenge_text(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.trim().is_empty() => format!("Sign-in refused: this sign-in needs an extra step that this portal does not support; contact your network administrator (the server asked: \"{}\")", m.trim()),
        _ => "Sign-in refused: this sign-in needs an extra step (Access-Challenge) that this portal does not support; contact your network administrator.".to_string(),
    }
}

/// The wire form of [`PortalError`]: every field a variant may carry, all optional but `error`.
#[derive(Serialize, Deserialize, Default)]
struct WireError {
    error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

impl PortalError {
    /// The variant's name: the `error` of the wire form, and a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            PortalError::InvalidInput { .. } => "InvalidInput",
            PortalError::Rejected { .. } => "Rejected",
            PortalError::ChallengeUnsupported { .. } => "ChallengeUnsupported",
            PortalError::OrganizationDisabled => "OrganizationDisabled",
            PortalError::ServersUnavailable => "ServersUnavailable",
            PortalError::AccountingUnavailable => "AccountingUnavailable",
            PortalError::Unavailable => "Unavailable",
            PortalError::UnusableAnswer { .. } => "UnusableAnswer",
            PortalError::UnsignedAnswer => "UnsignedAnswer",
            PortalError::RateLimited { .. } => "RateLimited",
            PortalError::NoSession => "NoSession",
            PortalError::Forbidden => "Forbidden",
            PortalError::AddressUnknown => "AddressUnknown",
            PortalError::Internal { .. } => "Internal",
            PortalError::Communication(_) => "Communication",
        }
    }
}

impl Serialize for PortalError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut wire = WireError {
            error: self.kind().to_string(),
            message: self.to_string(),
            ..WireError::default()
        };
        match self {
            PortalError::InvalidInput { field, .. } => wire.field = Some(field.clone()),
            PortalError::Rejected { message } | PortalError::ChallengeUnsupported { message } => {
                wire.reply_message = message.clone()
            }
            PortalError::RateLimited { retry_after_secs } => {
                wire.retry_after_secs = Some(*retry_after_secs)
            }
            PortalError::Communication(detail)
            | PortalError::UnusableAnswer { problem: detail } => wire.detail = Some(detail.clone()),
            PortalError::Internal { reference } => wire.reference = reference.clone(),
            _ => {}
        }
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PortalError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireError::deserialize(deserializer)?;
        Ok(match wire.error.as_str() {
            "InvalidInput" => PortalError::InvalidInput {
                field: wire.field.unwrap_or_default(),
                message: wire.message,
            },
            "Rejected" => PortalError::Rejected {
                message: wire.reply_message,
            },
            "ChallengeUnsupported" => PortalError::ChallengeUnsupported {
                message: wire.reply_message,
            },
            "OrganizationDisabled" => PortalError::OrganizationDisabled,
            "ServersUnavailable" => PortalError::ServersUnavailable,
            "AccountingUnavailable" => PortalError::AccountingUnavailable,
            "Unavailable" => PortalError::Unavailable,
            "UnusableAnswer" => PortalError::UnusableAnswer {
                problem: wire.detail.unwrap_or_default(),
            },
            "UnsignedAnswer" => PortalError::UnsignedAnswer,
            "RateLimited" => PortalError::RateLimited {
                retry_after_secs: wire.retry_after_secs.unwrap_or(60),
            },
            "NoSession" => PortalError::NoSession,
            "Forbidden" => PortalError::Forbidden,
            "AddressUnknown" => PortalError::AddressUnknown,
            "Internal" => PortalError::Internal {
                reference: wire.reference,
            },
            "Communication" => PortalError::Communication(wire.detail.unwrap_or_default()),
            other => {
                return Err(serde::de::Error::custom(format_args!(
                    "unknown error kind `{other}`"
                )))
            }
        })
    }
}

impl FromServerFnError for PortalError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // The server could not read the request's fields (missing, repeated, not text):
            // the caller's mistake, said plainly. The decoder's own text is not passed on (it
            // quotes keys the caller chose, which would then be shown as the portal's words);
            // only a field of ours it names is.
            ServerFnErrorErr::Args(detail) => args_error(&detail),
            other => PortalError::Communication(other.to_string()),
        }
    }
}

/// The fields of the portal's forms (server fn arguments): the only names an error repeats
/// back (any other key is the caller's text).
pub const FORM_FIELDS: [&str; 4] = ["username", "password", "csrf", "org"];

/// [`PortalError::InvalidInput`] for arguments that could not be decoded: which of our fields,
/// if the decoder named one, and what is wrong in our words.
fn args_error(detail: &str) -> PortalError {
    let named = FORM_FIELDS.iter().find(|field| {
        detail.contains(&format!("`{field}`")) || detail.contains(&format!("\"{field}\""))
    });
    let message = match named {
        Some(field) if detail.starts_with("missing field") => {
            format!("The request could not be read: `{field}` is missing.")
        }
        Some(field) => {
            format!("The request could not be read: `{field}` is not a single text value.")
        }
        None => "The request could not be read: a field is missing, repeated, unknown or not text."
            .to_string(),
    };
    PortalError::InvalidInput {
        field: named.map_or("request", |f| f).to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_of_one_second_reads_as_one() {
        let wait = |retry_after_secs| PortalError::RateLimited { retry_after_secs }.to_string();
        assert_eq!(
            wait(1),
            "Too many sign-in attempts. Please wait 1 second and try again."
        );
        assert!(wait(30).contains("wait 30 seconds"));
    }

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
    fn the_wire_form_names_the_error_and_says_its_sentence_and_round_trips() {
        let cases = [
            PortalError::InvalidInput {
                field: "username".into(),
                message: "Username is required.".into(),
            },
            PortalError::Rejected {
                message: Some("Account locked".into()),
            },
            PortalError::Rejected { message: None },
            PortalError::ChallengeUnsupported {
                message: Some("Enter the code".into()),
            },
            PortalError::ChallengeUnsupported { message: None },
            PortalError::RateLimited {
                retry_after_secs: 7,
            },
            PortalError::Forbidden,
            PortalError::AddressUnknown,
            PortalError::Communication("reset".into()),
            PortalError::Internal { reference: None },
            PortalError::Internal {
                reference: Some("3f9c2a1b04d7e6aa".into()),
            },
        ];
        for error in cases {
            let json = serde_json::to_value(&error).expect("serializes");
            assert_eq!(json["message"], error.to_string(), "{json}");
            assert!(json["error"].is_string(), "{json}");
            let back: PortalError = serde_json::from_value(json.clone()).expect("deserializes");
            assert_eq!(back, error, "{json}");
        }
        let json = serde_json::to_value(PortalError::RateLimited {
            retry_after_secs: 7,
        })
        .expect("serializes");
        assert_eq!(json["error"], "RateLimited");
        assert_eq!(json["retry_after_secs"], 7);
        assert!(serde_json::from_str::<PortalError>(r#"{"error":"Nonsense"}"#).is_err());
        assert!(serde_json::from_str::<PortalError>(r#""Forbidden""#).is_err());
    }

    #[test]
    fn undecodable_arguments_name_our_field_never_the_callers_text() {
        let e = args_error("missing field `username`");
        assert_eq!(
            e,
            PortalError::InvalidInput {
                field: "username".into(),
                message: "The request could not be read: `username` is missing.".into()
            }
        );
        let e = args_error("Multiple values for one key: \"Your account is locked. Call 0800\"");
        assert!(!e.to_string().contains("0800"), "{e}");
        assert!(e.to_string().contains("could not be read"), "{e}");
        let e = args_error("invalid type: sequence, expected a string for key `password`");
        assert!(e.to_string().contains("`password`"), "{e}");
        let e = args_error("Multiple values for one key: \"username\"");
        assert!(
            e.to_string()
                .contains("`username` is not a single text value"),
            "{e}"
        );
    }

    #[test]
    fn a_fault_names_its_reference() {
        let e = PortalError::Internal {
            reference: Some("3f9c2a1b04d7e6aa".into()),
        };
        assert!(
            e.to_string().ends_with("reference: 3f9c2a1b04d7e6aa."),
            "{e}"
        );
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json["reference"], "3f9c2a1b04d7e6aa", "{json}");
        let e = PortalError::Internal { reference: None };
        assert_eq!(
            e.to_string(),
            "Something went wrong on our side. Please try again."
        );
    }

    #[test]
    fn communication_detail_is_not_shown_to_the_user() {
        let e = PortalError::Communication("connection reset by 10.0.0.1".into());
        assert!(!e.to_string().contains("10.0.0.1"));
    }
}
