//! Wire types shared by the server and the browser. Plain data: every rule that produced them
//! (window, limit, guard) was applied on the server.

use serde::{Deserialize, Serialize};

/// For an enum of unit variants, read by name as the derived `Serialize` writes them:
/// `from_name` (the island's reader) and `Deserialize`, one match on the name.
macro_rules! deserialize_by_name {
    ($type:ty: $($variant:ident),+) => {
        impl $type {
            /// The variant of this name, as `Serialize` writes it.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($variant) => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_name(&name).ok_or_else(|| serde::de::Error::custom("unknown variant"))
            }
        }
    };
}

/// Which deadline will end the access session if nothing else happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndsBy {
    /// The window (idle time without a refresh) runs out first; Refresh extends it.
    Window,
    /// The limit (maximum lifetime since login) is reached first; Refresh cannot pass it.
    Limit,
}
deserialize_by_name!(EndsBy: Window, Limit);

/// What the session page shows about the user's access session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    /// RADIUS User-Name the session was opened for.
    pub username: String,
    /// Display name of the organization.
    pub organization: String,
    /// Client IP the session is bound to (Framed-IP-Address / Calling-Station-Id).
    pub client_ip: String,
    /// Milliseconds left, computed by the server when this view was made. The browser counts down
    /// from it with its monotonic clock, so a wrong wall clock in the browser does not matter.
    pub remaining_ms: u64,
    /// Which deadline ends the session.
    pub ends_by: EndsBy,
    /// When the session ends, as server wall-clock time (UTC, `HH:MM:SS`): what the page shows
    /// without JavaScript.
    pub ends_at_utc: String,
    /// When the session ends, Unix milliseconds on the server's clock: the browser shows it in
    /// its own time zone (the remaining time never comes from the browser's clock).
    pub ends_at_ms: i64,
    /// Reply-Message of the Access-Accept (all parts), shown to the user.
    pub reply_message: Option<String>,
    /// Length of the window in seconds (how long a refresh extends the session).
    pub window_secs: u64,
    /// The same in words ("15 minutes"), as the page says it (the island reads it as optional:
    /// a replica of the version before, during a rolling upgrade, does not send it).
    pub window_text: String,
    /// Whether a refresh can currently push the end time out.
    pub can_extend: bool,
    /// In how many milliseconds a refresh would reach the limit before a whole window (0:
    /// already), extending the session only up to its maximum length — once so, always so;
    /// none without a limit. Left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_reaches_limit_in_ms: Option<u64>,
    /// Path prefix of the organization's portal (`""` at `/`, else `/o/{slug}`): the page's
    /// forms, requests and links stay in the organization's portal.
    pub base: String,
    /// In a Refresh's answer only: the session had been refreshed a few seconds before, so
    /// this Refresh changed nothing (its time runs from then). Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_changed_nothing: bool,
    /// Which session this is, signed by the portal (the same for the session's life, another
    /// for another session): a page gives it back when it asks how its session stands, so that
    /// one its browser no longer holds is told as running or ended — not as none, which read
    /// as "disconnected" (the UI review's H1) — and a page never shows another session's time
    /// under this one's user and address (its M2). Empty from a replica of the version before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_ref: String,
}

/// What the session panel island holds of a [`SessionView`]: what it starts from, and what it
/// reads of a Refresh's or a status answer's view (the other fields are ignored). The rest of
/// the session page — user, organization, address, the Accept's message — is rendered by the
/// server around the island, so the browser does not decode it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PanelView {
    /// See [`SessionView::remaining_ms`].
    pub remaining_ms: u64,
    /// See [`SessionView::ends_by`].
    pub ends_by: EndsBy,
    /// See [`SessionView::ends_at_utc`].
    pub ends_at_utc: String,
    /// See [`SessionView::ends_at_ms`].
    pub ends_at_ms: i64,
    /// See [`SessionView::window_text`] (read as optional: a replica of an older version,
    /// during a rolling upgrade, may not send it).
    pub window_text: String,
    /// See [`SessionView::can_extend`].
    pub can_extend: bool,
    /// See [`SessionView::refresh_reaches_limit_in_ms`].
    pub refresh_reaches_limit_in_ms: Option<u64>,
    /// See [`SessionView::base`].
    pub base: String,
    /// See [`SessionView::refresh_changed_nothing`] (absent: false).
    pub refresh_changed_nothing: bool,
    /// See [`SessionView::session_ref`] (absent: empty).
    pub session_ref: String,
}

#[cfg(any(feature = "hydrate", test))]
impl PanelView {
    /// Reads the view out of a [`SessionView`]'s JSON (the island's reader); None if a field
    /// it needs is missing or of another type.
    pub fn from_json(json: &crate::islands::json::Json) -> Option<PanelView> {
        use crate::islands::json::Json;
        let field = |name| json.get(name);
        Some(PanelView {
            remaining_ms: u64::try_from(field("remaining_ms")?.int()?).ok()?,
            ends_by: EndsBy::from_name(field("ends_by")?.str()?)?,
            ends_at_utc: field("ends_at_utc")?.str()?.to_string(),
            ends_at_ms: field("ends_at_ms")?.int()?,
            window_text: field("window_text")
                .and_then(Json::str)
                .unwrap_or_default()
                .to_string(),
            can_extend: field("can_extend")?.bool()?,
            refresh_reaches_limit_in_ms: field("refresh_reaches_limit_in_ms")
                .and_then(Json::int)
                .and_then(|ms| u64::try_from(ms).ok()),
            base: field("base")?.str()?.to_string(),
            refresh_changed_nothing: field("refresh_changed_nothing")
                .and_then(Json::bool)
                .unwrap_or_default(),
            session_ref: field("session_ref")
                .and_then(Json::str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

impl From<&SessionView> for PanelView {
    fn from(view: &SessionView) -> Self {
        PanelView {
            remaining_ms: view.remaining_ms,
            ends_by: view.ends_by,
            ends_at_utc: view.ends_at_utc.clone(),
            ends_at_ms: view.ends_at_ms,
            window_text: view.window_text.clone(),
            can_extend: view.can_extend,
            refresh_reaches_limit_in_ms: view.refresh_reaches_limit_in_ms,
            base: view.base.clone(),
            refresh_changed_nothing: view.refresh_changed_nothing,
            session_ref: view.session_ref.clone(),
        }
    }
}

/// [`SessionStatus`] as the island reads it (the same JSON, with the view it needs).
#[derive(Clone, Debug, PartialEq)]
pub enum PanelStatus {
    /// See [`SessionStatus::Active`].
    Active(PanelView),
    /// See [`SessionStatus::Ended`].
    Ended(EndReason),
    /// See [`SessionStatus::NoSession`].
    NoSession,
}

#[cfg(any(feature = "hydrate", test))]
impl PanelStatus {
    /// Reads a [`SessionStatus`]'s JSON (the island's reader); None if it is not one.
    pub fn from_json(json: &crate::islands::json::Json) -> Option<PanelStatus> {
        if json.str() == Some("NoSession") {
            return Some(PanelStatus::NoSession);
        }
        if let Some(view) = json.get("Active") {
            return PanelView::from_json(view).map(PanelStatus::Active);
        }
        EndReason::from_name(json.get("Ended")?.str()?).map(PanelStatus::Ended)
    }
}

/// Why an access session ended, as the session page explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EndReason {
    /// The window ran out without a refresh.
    Expired,
    /// The maximum session length was reached.
    LimitReached,
    /// Disconnected by the user (on this or another page).
    Disconnected,
    /// Ended by the network operator or the RADIUS server (Disconnect-Request, admin).
    EndedByOperator,
    /// Ended because the operator disabled the organization, which stays disabled: signing in
    /// again is not possible, so the page offers no sign-in.
    OrganizationDisabled,
    /// Replaced by a newer sign-in from the same device.
    Replaced,
    /// Ended because the accounting servers could not be reached.
    Failed,
    /// Not ended: this device's session runs on, but this browser is no longer linked to it
    /// (its cookie was removed, or its web session is gone). Signing in again replaces it.
    NotLinked,
}
deserialize_by_name!(EndReason: Expired, LimitReached, Disconnected, EndedByOperator,
    OrganizationDisabled, Replaced, Failed, NotLinked);

impl EndReason {
    /// Every reason, in the order of their codes ([`Notice::code`]).
    const ALL: [EndReason; 8] = [
        EndReason::Expired,
        EndReason::LimitReached,
        EndReason::Disconnected,
        EndReason::EndedByOperator,
        EndReason::OrganizationDisabled,
        EndReason::Replaced,
        EndReason::Failed,
        EndReason::NotLinked,
    ];
}

/// What the next page tells a visitor once, after what the visitor just did (carried by the
/// server's flash cookie, never by the URL): the sign-in page after a Disconnect, the session
/// page after a Refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Notice {
    /// The visitor pressed Disconnect: the session ended and network access with it.
    Disconnected,
    /// The visitor pressed Disconnect on a page whose session had already ended (the operator,
    /// its time, a new sign-in): nothing was left to disconnect — and why, when known.
    AlreadyEnded(Option<EndReason>),
    /// The session page, after a Refresh sent without JavaScript (the island says it itself):
    /// the window restarted.
    Refreshed,
    /// The same, for a Refresh within seconds of the last one, which restarted nothing (see
    /// the server's `REFRESH_QUIET_MS`).
    RefreshedRecently,
    /// The sign-in page, after the session page was asked for by a browser that holds no
    /// session there (its "Already signed in?" link, a bookmark): said, not a silent return.
    NoSessionHere,
}

/// What the session page shows after a Refresh: the server's notice after a plain form post,
/// the panel's own after its Refresh (`changed_nothing`: within 5 s of the last one).
pub fn refresh_notice(changed_nothing: bool) -> &'static str {
    if changed_nothing {
        "Your session was refreshed a few seconds ago, so this Refresh changed nothing: its time runs from then."
    } else {
        "Refreshed: your session now ends at the time shown on this page."
    }
}

impl Notice {
    /// The notice's code on the wire (`http::flash`: a header, a cookie byte).
    pub fn code(self) -> u8 {
        match self {
            Notice::Disconnected => 0,
            Notice::AlreadyEnded(None) => 1,
            Notice::Refreshed => 2,
            Notice::RefreshedRecently => 3,
            Notice::NoSessionHere => 4,
            Notice::AlreadyEnded(Some(reason)) => {
                16 + EndReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(0) as u8
            }
        }
    }

    /// The notice of a code ([`Notice::code`]); None for a code no notice has.
    pub fn from_code(code: u8) -> Option<Notice> {
        Some(match code {
            0 => Notice::Disconnected,
            1 => Notice::AlreadyEnded(None),
            2 => Notice::Refreshed,
            3 => Notice::RefreshedRecently,
            4 => Notice::NoSessionHere,
            16.. => Notice::AlreadyEnded(Some(*EndReason::ALL.get(usize::from(code - 16))?)),
            _ => return None,
        })
    }
}

/// The state of the page's access session: what the live updates (Server-Sent Events) and the
/// status server fn report. The server is the only source of it.
// One per answer, moved and dropped: the active view unboxed costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionStatus {
    /// Active, with its current view (remaining time measured by the server now).
    Active(SessionView),
    /// Ended, and why.
    Ended(EndReason),
    /// This browser has no access session.
    NoSession,
}

/// Facts about the deployment the login page shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// Display name of the organization the login form signs into.
    pub organization: String,
    /// Its id (slug): the login form names it.
    pub organization_id: String,
    /// Path prefix of its portal (`""` at `/`, else `/o/{slug}`).
    pub base: String,
    /// False when the organization is disabled: the page says so and offers no form.
    pub active: bool,
    /// True under `radius-portal demo`: the page says so in large letters.
    pub demo: bool,
    /// The organization's look.
    pub branding: BrandingInfo,
}

/// What the pages need of an organization's branding (the colour and logo themselves are
/// served at `{base}/brand.css` and `{base}/logo`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BrandingInfo {
    /// It has an accent colour: link `{base}/brand.css`.
    pub accent: bool,
    /// It has a logo: show `{base}/logo`.
    pub logo: bool,
    /// A line of help under the form (plain text).
    pub help_text: Option<String>,
    /// Who to ask for help (plain text).
    pub contact: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_as_written() {
        for status in EndReason::ALL
            .map(SessionStatus::Ended)
            .into_iter()
            .chain([SessionStatus::NoSession])
        {
            let text = serde_json::to_string(&status).unwrap();
            assert_eq!(
                serde_json::from_str::<SessionStatus>(&text).unwrap(),
                status
            );
        }
        for ends_by in [EndsBy::Window, EndsBy::Limit] {
            let text = serde_json::to_string(&ends_by).unwrap();
            assert_eq!(serde_json::from_str::<EndsBy>(&text).unwrap(), ends_by);
        }
        assert!(serde_json::from_str::<EndReason>(r#""Gone""#).is_err());
    }

    #[test]
    fn the_island_reads_what_the_server_writes() {
        let view = SessionView {
            username: "carol".into(),
            organization: "Acme".into(),
            client_ip: "10.0.0.5".into(),
            remaining_ms: 1500,
            ends_by: EndsBy::Limit,
            ends_at_utc: "12:00:00".into(),
            ends_at_ms: 1_800_000_000_000,
            reply_message: Some("Welcome".into()),
            window_secs: 900,
            window_text: "15 minutes".into(),
            can_extend: false,
            refresh_reaches_limit_in_ms: Some(4_000),
            base: "/o/acme".into(),
            refresh_changed_nothing: false,
            session_ref: "42.0123456789abcdef0123456789abcdef".into(),
        };
        let panel = PanelView::from(&view);
        assert_eq!(panel.session_ref, view.session_ref);
        // A Refresh that changed nothing says so; any other answer leaves the field out.
        assert!(!serde_json::to_string(&view)
            .unwrap()
            .contains("refresh_changed_nothing"));
        let unchanged = SessionView {
            refresh_changed_nothing: true,
            ..view.clone()
        };
        let read = |text: &str| crate::islands::json::Json::parse(text).unwrap();
        let panel_read =
            PanelView::from_json(&read(&serde_json::to_string(&unchanged).unwrap())).unwrap();
        assert!(panel_read.refresh_changed_nothing);
        for (written, expected) in [
            (
                SessionStatus::Active(view.clone()),
                PanelStatus::Active(panel.clone()),
            ),
            (
                SessionStatus::Ended(EndReason::NotLinked),
                PanelStatus::Ended(EndReason::NotLinked),
            ),
            (SessionStatus::NoSession, PanelStatus::NoSession),
        ] {
            let text = serde_json::to_string(&written).unwrap();
            assert_eq!(PanelStatus::from_json(&read(&text)), Some(expected));
        }
        // A Refresh's answer is the whole view; a server of the version before sends no words.
        let mut text = serde_json::to_value(&view).unwrap();
        assert_eq!(
            PanelView::from_json(&read(&text.to_string())),
            Some(panel.clone())
        );
        text.as_object_mut().unwrap().remove("window_text");
        let older = PanelView::from_json(&read(&text.to_string())).unwrap();
        assert_eq!(older.window_text, "");
        // Every field the island needs is needed: without one (or of another type) the answer
        // is not read, rather than read as something else.
        for field in [
            "remaining_ms",
            "ends_by",
            "ends_at_utc",
            "ends_at_ms",
            "can_extend",
            "base",
        ] {
            let mut text = serde_json::to_value(&view).unwrap();
            text.as_object_mut().unwrap().remove(field);
            assert_eq!(
                PanelView::from_json(&read(&text.to_string())),
                None,
                "{field}"
            );
            text[field] = serde_json::json!([]);
            assert_eq!(
                PanelView::from_json(&read(&text.to_string())),
                None,
                "{field}"
            );
        }
        let mut negative = serde_json::to_value(&view).unwrap();
        negative["remaining_ms"] = serde_json::json!(-1);
        assert_eq!(PanelView::from_json(&read(&negative.to_string())), None);
        for other in [
            r#""Gone""#,
            r#"{"Ended":"Gone"}"#,
            r#"{"Active":{}}"#,
            "{}",
            "null",
        ] {
            assert_eq!(PanelStatus::from_json(&read(other)), None, "{other}");
        }
    }
}
