//! Operator changes of organizations — the one implementation behind the CLI and the admin API:
//! create, update, delete, enable/disable, and an organization's RADIUS servers. Every change
//! asks the guard (design.md §5: a disabled organization's objects may be read and deleted,
//! not created or updated — 403; only its active flag may change, and re-enabling
//! together with another change is refused), validates the result as the configuration file
//! would (secrets resolved), stores it in one audited transaction, and refreshes this process's
//! cache entry of that organization only. Audit details never hold secrets.

use super::{guard, set_active, Organization, OrganizationError, Organizations};
use crate::{
    access_session::now_ms,
    config::{OrganizationSettings, ServerSettings},
    organizations::guard::{Operation, OrgState},
    storage::{DeleteOutcome, OrganizationWrite, Storage, StorageError, UpdateOutcome},
};
use serde_json::{Map, Value};

/// Why a change was refused. Each kind has one HTTP status and one CLI exit code.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// 404 / exit 3.
    #[error("no organization `{}`", crate::shortened(.0))]
    NotFound(String),
    /// 404 / exit 3.
    #[error("organization `{}` has no server `{}`", crate::shortened(.0), crate::shortened(.1))]
    NoServer(String, String),
    /// 400 / exit 4: the request itself is wrong (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// 403 / exit 4: the guard refuses it (the organization is disabled).
    #[error("{0}")]
    Forbidden(String),
    /// 409 / exit 4: conflicts with the stored state.
    #[error("{0}")]
    Conflict(String),
    /// 500 / exit 1.
    #[error(transparent)]
    Internal(#[from] OrganizationError),
}

impl From<StorageError> for ChangeError {
    fn from(e: StorageError) -> Self {
        ChangeError::Internal(e.into())
    }
}

/// What a disabled organization's update gets (the guard's AdminUpdate row).
const DISABLED_UPDATE: &str =
    "the organization is disabled: it cannot be changed, only enabled (enable it first, on its own)";
/// What creating an object of a disabled organization gets (the guard's AdminCreate row).
const DISABLED_CREATE: &str =
    "the organization is disabled: nothing can be added to it (enable it first, on its own)";

/// The keys that name the active flag in a change (`enabled` as in the configuration file,
/// `active` as a `GET` shows it).
pub(crate) const ACTIVE_KEYS: [&str; 3] = ["is_active", "enabled", "active"];

/// Settings as shown in audit entries and operator output: every secret replaced by whether
/// it is set.
pub fn redacted(settings: &OrganizationSettings) -> Value {
    let mut value = serde_json::to_value(settings).unwrap_or(Value::Null);
    for server in servers_mut(&mut value) {
        if let Some(secret) = server.get_mut("secret").filter(|s| !s.is_null()) {
            *secret = Value::String("(set)".into());
        }
    }
    value
}

/// The server entries of settings as JSON, to change in place.
fn servers_mut(settings: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    settings
        .get_mut("servers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Settings in the configuration file's form for operators (`org show --json`'s `settings`):
/// `secret` left out (a `secret_file` path stays), so the text can be edited and given back to
/// `update`, where servers without a secret keep theirs.
pub fn without_secrets(settings: &OrganizationSettings) -> Value {
    let mut value = serde_json::to_value(settings).unwrap_or(Value::Null);
    for server in servers_mut(&mut value) {
        server.remove("secret");
        if server.get("secret_file").is_some_and(Value::is_null) {
            server.remove("secret_file");
        }
    }
    value
}

/// `value` as the JSON object `what` is; an empty one is refused with `when_empty` (a new
/// organization or server misses everything, a change its keys).
fn object(value: Value, what: &str, when_empty: &str) -> Result<Map<String, Value>, ChangeError> {
    match value {
        Value::Object(map) if !map.is_empty() => Ok(map),
        Value::Object(_) => Err(ChangeError::Invalid(format!("{what}: {when_empty}"))),
        _ => Err(ChangeError::Invalid(format!(
            "{what}: must be a JSON object"
        ))),
    }
}

/// Deserializes `value`, naming the field a problem is in (`organization.servers[0].address:
/// not an IP address like …`).
fn parse<T: serde::de::DeserializeOwned>(value: Value, key: &str) -> Result<T, ChangeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        ChangeError::Invalid(format!(
            "{at}: {}",
            crate::config::explained(&e.inner().to_string())
        ))
    })
}

/// Parses and checks settings the way the configuration file is checked; the servers named
/// in `kept` keep their stored secret ([`OrganizationSettings::validate_keeping`]).
fn checked(value: Value, key: &str, kept: &[&str]) -> Result<OrganizationSettings, ChangeError> {
    let settings: OrganizationSettings = parse(value, key)?;
    settings
        .validate_keeping(key, kept)
        .map_err(|e| ChangeError::Invalid(format!("{}: {}", e.key, e.problem)))?;
    Organization::from_settings(key, &settings)
        .map_err(|e| ChangeError::Invalid(format!("{}: {}", e.key, e.problem)))?;
    Ok(settings)
}

/// The guard's state of a stored organization (NotFound if there is none).
async fn state_of(storage: &Storage, id: &str) -> Result<OrgState, ChangeError> {
    match storage.organization_active(id).await? {
        None => Err(ChangeError::NotFound(id.to_string())),
        active => Ok(OrgState::from_active(active)),
    }
}

/// Server names that differ only in letter case are refused in a create or a change, as ids
/// are (black-box tester M's D6; the configuration file's are, in `Settings::validate`).
fn server_names_once(servers: &[ServerSettings], key: &str) -> Result<(), ChangeError> {
    match crate::config::server_names_clash(servers.iter().map(|s| s.name.as_str())) {
        Some((j, problem)) => Err(ChangeError::Invalid(format!(
            "{key}.servers[{j}].name: {problem}"
        ))),
        None => Ok(()),
    }
}

/// What a change of `id` (a server's, `server` named) would be refused for before its body is
/// read: no such organization (or server), or the guard (`create`: the guard's AdminCreate
/// row, else AdminUpdate). For an answer that has another reason to refuse the body (the admin
/// API's files), so that it names the one a caller must mend first.
pub async fn refused_before_the_body(
    storage: &Storage,
    id: &str,
    create: bool,
    server: Option<&str>,
) -> Result<(), ChangeError> {
    let (operation, said) = if create {
        (Operation::AdminCreate, DISABLED_CREATE)
    } else {
        (Operation::AdminUpdate, DISABLED_UPDATE)
    };
    if !guard::allows(operation, state_of(storage, id).await?) {
        return Err(ChangeError::Forbidden(said.into()));
    }
    if let Some(name) = server {
        let stored = stored_settings(storage, id).await?;
        if stored_server(&stored.settings, name).is_none() {
            return Err(ChangeError::NoServer(id.to_string(), name.to_string()));
        }
    }
    Ok(())
}

/// An organization's stored settings as JSON, with the revision they were read at.
pub(crate) struct Stored {
    pub(crate) settings: Map<String, Value>,
    revision: i64,
    /// Listed in the configuration file (its settings come back at the next start).
    from_config: bool,
}

/// The stored settings of an organization as JSON.
pub(crate) async fn stored_settings(storage: &Storage, id: &str) -> Result<Stored, ChangeError> {
    let row = storage
        .organization(id)
        .await?
        .ok_or_else(|| ChangeError::NotFound(id.to_string()))?;
    let json = row.settings.ok_or_else(|| {
        ChangeError::Conflict(format!(
            "organization `{id}` has no stored settings (list it in the configuration file)"
        ))
    })?;
    match serde_json::from_str(&json) {
        Ok(Value::Object(mut map)) => {
            // The column is the truth for the name.
            map.insert("name".into(), Value::String(row.name));
            Ok(Stored {
                settings: map,
                revision: row.revision,
                from_config: row.from_config,
            })
        }
        _ => Err(ChangeError::Internal(OrganizationError::Corrupt(
            id.to_string(),
            "stored settings are not a JSON object".into(),
        ))),
    }
}

/// Where a server entry sends packets: address and ports (the defaults when left out).
pub(crate) fn destination(server: &Map<String, Value>) -> (Option<String>, u64, u64) {
    let port = |key: &str, default: u64| server.get(key).and_then(Value::as_u64).unwrap_or(default);
    // Compared as addresses, not as text: `2001:DB8::1` is `2001:db8::1`.
    let address = server.get("address").map(|a| {
        a.as_str()
            .and_then(|text| text.parse::<std::net::IpAddr>().ok())
            .map_or_else(|| a.to_string(), |ip| ip.to_canonical().to_string())
    });
    (address, port("auth_port", 1812), port("acct_port", 1813))
}

/// Refreshes this process's cache after a committed change; a failure is logged (the change
/// is stored; the worker's next pass brings the cache up to it).
pub(super) async fn refresh_after_change(storage: &Storage, organizations: &Organizations) {
    if let Err(e) = organizations.refresh(storage).await {
        tracing::error!(error = %e, "organization cache not refreshed after a change; the worker retries");
    }
}

/// A server entry of a change that names neither `secret` nor `secret_file` keeps the stored
/// server's (by name): secrets are never shown, so a read-modify-write must not wipe them.
/// Not when it now points somewhere else: the secret would be handed to another host.
fn keep_secret(entry: &mut Map<String, Value>, stored: Option<&Value>) {
    let given = |key: &str| entry.get(key).is_some_and(|v| !v.is_null());
    if given("secret") || given("secret_file") {
        return;
    }
    if let Some(stored) = stored
        .and_then(Value::as_object)
        .filter(|stored| destination(stored) == destination(entry))
    {
        for key in ["secret", "secret_file"] {
            if let Some(v) = stored.get(key).filter(|v| !v.is_null()) {
                entry.insert(key.into(), v.clone());
            }
        }
    }
}

/// The server entries of stored settings (none when the key is missing or not a list).
fn servers_of(settings: &Map<String, Value>) -> &[Value] {
    settings
        .get("servers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A server entry's `name`.
fn name_of(server: &Value) -> Option<&str> {
    server.get("name").and_then(Value::as_str)
}

pub(crate) fn stored_server<'a>(settings: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    servers_of(settings)
        .iter()
        .find(|s| name_of(s) == Some(name))
}

/// Which change [`store`] writes: of organization `id`, by `actor`; `what` names it in the
/// audit entry; `require_active` for creates and updates (the guard), not for deletes of its
/// objects.
struct Change<'a> {
    id: &'a str,
    actor: &'a str,
    what: &'a str,
    /// The server a `server.*` change is of, named in the audit entry.
    server: Option<&'a str>,
    require_active: bool,
}

/// Validates and stores new settings of an existing organization.
async fn store(
    storage: &Storage,
    organizations: &Organizations,
    change: Change<'_>,
    before: Stored,
    after: Map<String, Value>,
) -> Result<bool, ChangeError> {
    let Change {
        id,
        actor,
        what,
        server,
        require_active,
    } = change;
    let key = format!("organizations.{id}");
    // Servers whose secret is the one stored (kept, or given again as it was): not new. Only
    // a secret stored in the settings: a `secret_file` is read as it is now, so its text is
    // checked whatever the change (a file that grew a second line would sign with it).
    let kept: Vec<String> = servers_of(&after)
        .iter()
        .filter_map(|server| {
            let name = name_of(server)?;
            let stored = stored_server(&before.settings, name)?;
            let inline = |entry: &Value| entry.get("secret").filter(|v| !v.is_null()).cloned();
            let file = |entry: &Value| entry.get("secret_file").filter(|v| !v.is_null()).cloned();
            (inline(server).is_some() && inline(server) == inline(stored) && file(server).is_none())
                .then(|| name.to_owned())
        })
        .collect();
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    let after = checked(Value::Object(after), &key, &kept)?;
    // Only a clash the change makes: one stored already (an older release let it in) leaves
    // the organization's other changes possible (black-box tester W).
    let stored = servers_of(&before.settings).iter().filter_map(name_of);
    if crate::config::server_names_clash(stored).is_none() {
        server_names_once(&after.servers, &key)?;
    }
    // A server its sessions still need keeps its name and where its accounting goes.
    if let Err(needed) = super::servers_still_needed(
        storage,
        id,
        servers_of(&before.settings),
        &after.servers,
        super::ServerMoves::Refused,
    )
    .await?
    {
        return Err(ChangeError::Conflict(needed.advice(UNTIL_SESSIONS_END)));
    }
    // The next start applies the file's servers again: one added, renamed or sending its
    // accounting elsewhere here would be taken from the sessions it authenticated meanwhile
    // (and that start refused while they need it).
    if before.from_config {
        if let Some(name) = super::new_or_moved_server(servers_of(&before.settings), &after.servers)
        {
            return Err(ChangeError::Conflict(format!(
                "organization `{id}` is listed in the configuration file, whose servers the next start applies again: server `{name}` added, renamed or sending accounting elsewhere here would be taken from the sessions it authenticates (and that start refused while they need it); make the change in the file, check it with `check-config`, and restart"
            )));
        }
    }
    let secret_changed: Vec<&str> = after
        .servers
        .iter()
        .filter(|server| {
            stored_server(&before.settings, &server.name).is_some_and(|stored| {
                !kept.contains(&server.name.as_str())
                    && (server.secret.is_some()
                        || server.secret_file.as_ref().map(|f| f.to_string_lossy())
                            != stored
                                .get("secret_file")
                                .and_then(Value::as_str)
                                .map(std::borrow::Cow::Borrowed))
            })
        })
        .map(|server| server.name.as_str())
        .collect();
    // Checked again in the write: a session signed in meanwhile may need them.
    let stored_servers = servers_of(&before.settings).to_vec();
    let servers_freed: Vec<String> =
        super::servers_freed(&stored_servers, &after.servers, super::ServerMoves::Refused)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
    let before_view =
        serde_json::from_value::<OrganizationSettings>(Value::Object(before.settings))
            .map(|b| redacted(&b))
            .unwrap_or(Value::Null);
    let json = serde_json::to_string(&after)
        .map_err(|e| OrganizationError::Corrupt(id.to_string(), e.to_string()))?;
    let mut detail =
        serde_json::json!({ "change": what, "before": before_view, "after": redacted(&after) });
    if let Some(server) = server {
        detail["server"] = serde_json::json!(server);
    }
    // Secrets are never written: which servers were given a new one is.
    if !secret_changed.is_empty() {
        detail["secret_changed"] = serde_json::json!(secret_changed);
    }
    let now = now_ms();
    let write = OrganizationWrite {
        id,
        name: &after.name,
        settings_json: &json,
        actor,
        now,
        detail: &detail,
        expected_revision: Some(before.revision),
        servers_freed: &servers_freed,
        copies_since: now - crate::accounting::COPY_GIVE_UP_MS,
    };
    let outcome = storage.update_organization(&write, require_active).await?;
    refresh_after_change(storage, organizations).await;
    match outcome {
        // A session signed in while the change was worked out needs a server it frees: said
        // as the check before the write says it.
        UpdateOutcome::ServerNeeded => Err(ChangeError::Conflict(
            match super::servers_still_needed(
                storage,
                id,
                &stored_servers,
                &after.servers,
                super::ServerMoves::Refused,
            )
            .await?
            {
                Err(needed) => needed.advice(UNTIL_SESSIONS_END),
                Ok(()) => format!("organization `{id}`: a session signed in while the change was made needs a server it removes or moves: try again"),
            },
        )),
        UpdateOutcome::Updated => Ok(true),
        UpdateOutcome::Unchanged => Ok(false),
        UpdateOutcome::NotFound => Err(ChangeError::NotFound(id.to_string())),
        // Disabled between the check and the write: the disable wins.
        UpdateOutcome::Disabled => Err(ChangeError::Forbidden(DISABLED_UPDATE.into())),
        UpdateOutcome::Stale => Err(ChangeError::Conflict(format!(
            "organization `{id}` was changed by someone else meanwhile: read it again and retry"
        ))),
    }
}

/// What an empty change is refused with.
const NOTHING_TO_CHANGE: &str = "nothing to change";

/// What to do about a server sessions still need ([`super::ServerNeeded::advice`]).
const UNTIL_SESSIONS_END: &str = ": keep it as it is until they have ended (disabling the organization ends them); to send new sessions to another server meanwhile, add that one beside it, first";

/// Creates an organization from settings in the configuration file's form (JSON). `enabled`
/// (or `is_active`) false creates it disabled.
pub async fn create(
    storage: &Storage,
    organizations: &Organizations,
    body: Value,
    actor: &str,
) -> Result<String, ChangeError> {
    let mut body = object(
        body,
        "organization",
        "empty: give its settings (`id`, `name`, `servers`, …)",
    )?;
    // One of the flag's names at most (as for a change): two could say different things.
    let given: Vec<&str> = ACTIVE_KEYS
        .into_iter()
        .filter(|k| body.contains_key(*k))
        .collect();
    if let [first, other, ..] = given[..] {
        return Err(ChangeError::Invalid(format!(
            "{other}: names the same flag as {first}: give one of them"
        )));
    }
    let mut active = None;
    for key in ["is_active", "active"] {
        match body.remove(key) {
            Some(Value::Bool(b)) => active = Some(b),
            Some(_) => {
                return Err(ChangeError::Invalid(format!(
                    "{key}: must be true or false"
                )))
            }
            None => {}
        }
    }
    let settings = checked(Value::Object(body), "organization", &[])?;
    server_names_once(&settings.servers, "organization")?;
    let active = active.or(settings.enabled).unwrap_or(true);
    let json = serde_json::to_string(&settings)
        .map_err(|e| OrganizationError::Corrupt(settings.id.clone(), e.to_string()))?;
    let detail = serde_json::json!({ "after": redacted(&settings), "active": active });
    let write = OrganizationWrite {
        id: &settings.id,
        name: &settings.name,
        settings_json: &json,
        actor,
        now: now_ms(),
        detail: &detail,
        expected_revision: None,
        servers_freed: &[],
        copies_since: 0,
    };
    // Refused when the id exists already, also in other letter case: ids that differ only in
    // case would be told apart by a URL's case alone (and by whoever reads a log or a
    // firewall's identity feed by eye). The write checks it, so two creates at once on two
    // replicas cannot both pass.
    if !storage.create_organization(&write, active).await? {
        let as_written = storage
            .organizations()
            .await?
            .into_iter()
            .find(|o| o.id != settings.id && o.id.eq_ignore_ascii_case(&settings.id));
        return Err(ChangeError::Conflict(match as_written {
            Some(other) => format!(
                "organization `{}` exists already as `{}` (ids that differ only in letter case count as one)",
                settings.id, other.id
            ),
            None => format!("organization `{}` exists already", settings.id),
        }));
    }
    refresh_after_change(storage, organizations).await;
    tracing::warn!(organization = %settings.id, actor, active, "organization created");
    Ok(settings.id)
}

/// What an organization's change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Updated {
    /// Something changed.
    pub changed: bool,
    /// An enable closed a disable's stop of its sessions before it was done.
    pub skipped_stop: Option<crate::storage::SkippedStop>,
}

/// Changes an organization: `is_active` (or `enabled`) on its own, or any other settings keys
/// of the configuration file's form (`servers` replaces the list; a server listed without a
/// secret keeps its stored one).
pub async fn update(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    patch: Value,
    actor: &str,
) -> Result<Updated, ChangeError> {
    let mut patch = object(patch, "change", NOTHING_TO_CHANGE)?;
    let state = state_of(storage, id).await?;
    let mut flags = ACTIVE_KEYS
        .iter()
        .filter_map(|k| patch.remove(*k).map(|v| (*k, v)));
    let flag = flags.next();
    if let Some((other, _)) = flags.next() {
        let first = flag.as_ref().map_or("", |(key, _)| key);
        return Err(ChangeError::Invalid(format!(
            "{other}: names the same flag as {first}: give one of them"
        )));
    }
    if let Some((key, value)) = flag {
        let Value::Bool(active) = value else {
            return Err(ChangeError::Invalid(format!(
                "{key}: must be true or false"
            )));
        };
        if !patch.is_empty() {
            return Err(if guard::allows(Operation::AdminUpdate, state) {
                ChangeError::Invalid(format!(
                    "{key}: enable or disable on its own, not together with other changes"
                ))
            } else {
                ChangeError::Forbidden(DISABLED_UPDATE.into())
            });
        }
        return match set_active(storage, organizations, id, active, actor).await? {
            None => Err(ChangeError::NotFound(id.to_string())),
            Some(change) => Ok(Updated {
                changed: change.changed,
                skipped_stop: change.skipped_stop,
            }),
        };
    }
    if !guard::allows(Operation::AdminUpdate, state) {
        return Err(ChangeError::Forbidden(DISABLED_UPDATE.into()));
    }
    // The id may be repeated (a file from `org show --json`'s settings), not changed.
    match patch.remove("id") {
        Some(Value::String(same)) if same == id => {}
        Some(_) => {
            return Err(ChangeError::Invalid(
                "id: cannot be changed (create a new organization)".into(),
            ))
        }
        None => {}
    }
    let before = stored_settings(storage, id).await?;
    let mut after = before.settings.clone();
    for (key, mut value) in patch {
        if key == "servers" {
            if let Some(servers) = value.as_array_mut() {
                for entry in servers.iter_mut().filter_map(Value::as_object_mut) {
                    let name = entry.get("name").and_then(Value::as_str).map(str::to_owned);
                    keep_secret(
                        entry,
                        name.as_deref()
                            .and_then(|n| stored_server(&before.settings, n)),
                    );
                }
            }
        }
        // A table of keys (branding) is merged into the stored one, key by key — one key
        // given changes that key (black-box tester U's D1: the accent colour, help line and
        // contact went with a change of the logo alone); `null` removes a key (JSON merge
        // patch). The server list is replaced whole (its entries are objects of their own).
        if let (Value::Object(given), Some(Value::Object(stored))) = (&value, after.get(&key)) {
            let mut merged = stored.clone();
            for (inner, v) in given {
                if v.is_null() {
                    merged.remove(inner);
                } else {
                    merged.insert(inner.clone(), v.clone());
                }
            }
            value = Value::Object(merged);
        }
        after.insert(key, value);
    }
    store(
        storage,
        organizations,
        Change {
            id,
            actor,
            what: "update",
            server: None,
            require_active: true,
        },
        before,
        after,
    )
    .await
    .map(|changed| Updated {
        changed,
        skipped_stop: None,
    })
}

/// Deletes an organization that has nothing left to do: no open sessions, no accounting to
/// deliver, not listed in the configuration file.
pub async fn delete(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    actor: &str,
) -> Result<(), ChangeError> {
    let state = state_of(storage, id).await?;
    debug_assert!(guard::allows(Operation::AdminDelete, state));
    let before = stored_settings(storage, id)
        .await
        .ok()
        .and_then(|b| {
            serde_json::from_value::<OrganizationSettings>(Value::Object(b.settings)).ok()
        })
        .map(|b| redacted(&b))
        .unwrap_or(Value::Null);
    let detail = serde_json::json!({ "before": before });
    // Its ended sessions' history first, in short writes of their own (each its own call: on
    // PostgreSQL one call is given up after 90 s) — nothing while the delete would be
    // refused; the delete then takes the rest.
    crate::storage::in_chunks(&tokio_util::sync::CancellationToken::new(), |limit| {
        storage.forget_ended_sessions(id, limit)
    })
    .await?;
    match storage.delete_organization(id, actor, now_ms(), &detail).await? {
        DeleteOutcome::Deleted => {
            refresh_after_change(storage, organizations).await;
            tracing::warn!(organization = id, actor, "organization deleted");
            Ok(())
        }
        DeleteOutcome::NotFound => Err(ChangeError::NotFound(id.to_string())),
        DeleteOutcome::FromConfig => Err(ChangeError::Conflict(format!(
            "organization `{id}` is listed in the configuration file: remove it there (the portal then disables it at start-up), then delete it"
        ))),
        // Its sessions ended already (a disable stopped them): only their accounting is left.
        DeleteOutcome::Busy { open_sessions: 0, pending_accounting } => Err(ChangeError::Conflict(format!(
            "organization `{id}` has {pending_accounting} accounting record(s) not yet delivered to its RADIUS servers: delete it once they are (they are retried until acknowledged, or dead-lettered; `accounting backlog` shows them; should none of its servers ever answer again, `{}` gives them up)",
            super::give_up_command(id)
        ))),
        // Disabled already: its stop has not come to them yet (a running portal does it within a
        // second or so; none running, the next start does).
        DeleteOutcome::Busy { open_sessions, pending_accounting } if state == OrgState::Disabled => Err(ChangeError::Conflict(format!(
            "organization `{id}` is disabled but {open_sessions} of its session(s) are not stopped yet ({pending_accounting} accounting record(s) not yet delivered): the disable's stop runs in the portal (at its next start if none runs); delete it once they are stopped"
        ))),
        DeleteOutcome::Busy { open_sessions, pending_accounting } => Err(ChangeError::Conflict(format!(
            "organization `{id}` has {open_sessions} open session(s) and {pending_accounting} accounting record(s) not yet delivered: disable it first (its sessions are stopped), then delete it"
        ))),
    }
}

/// Adds a RADIUS server (at the end of the order of preference).
pub async fn add_server(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    server: Value,
    actor: &str,
) -> Result<(), ChangeError> {
    let server = object(
        server,
        "server",
        "empty: give its settings (`name`, `address`, `secret`, …)",
    )?;
    if !guard::allows(Operation::AdminCreate, state_of(storage, id).await?) {
        return Err(ChangeError::Forbidden(DISABLED_CREATE.into()));
    }
    let name = server
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Checked on its own first, so errors name the server's fields.
    parse::<ServerSettings>(Value::Object(server.clone()), "server")?;
    let before = stored_settings(storage, id).await?;
    if stored_server(&before.settings, &name).is_some() {
        return Err(ChangeError::Conflict(format!(
            "organization `{id}` has a server `{name}` already"
        )));
    }
    let mut after = before.settings.clone();
    let mut servers = servers_of(&after).to_vec();
    servers.push(Value::Object(server));
    after.insert("servers".into(), Value::Array(servers));
    store(
        storage,
        organizations,
        Change {
            id,
            actor,
            what: "server.add",
            server: Some(&name),
            require_active: true,
        },
        before,
        after,
    )
    .await?;
    Ok(())
}

/// Changes a RADIUS server's fields (a rename with `name`; the secret is kept unless given).
pub async fn update_server(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    name: &str,
    patch: Value,
    actor: &str,
) -> Result<bool, ChangeError> {
    let patch = object(patch, "server", NOTHING_TO_CHANGE)?;
    if !guard::allows(Operation::AdminUpdate, state_of(storage, id).await?) {
        return Err(ChangeError::Forbidden(DISABLED_UPDATE.into()));
    }
    let before = stored_settings(storage, id).await?;
    let Some(Value::Object(mut entry)) = stored_server(&before.settings, name).cloned() else {
        return Err(ChangeError::NoServer(id.to_string(), name.to_string()));
    };
    let stored_entry = entry.clone();
    let given: Vec<&str> = ["secret", "secret_file"]
        .into_iter()
        .filter(|k| patch.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    entry.extend(patch);
    // A secret given replaces the stored one (of either kind; the same one given again stays);
    // a new destination needs one (the stored secret is never handed to another host).
    let moved = destination(&entry) != destination(&stored_entry);
    if moved && given.is_empty() {
        return Err(ChangeError::Invalid(format!(
            "`secret` (or `secret_file`) must be given again: server `{name}` would point at another address or port, and its stored secret is never handed to another host"
        )));
    }
    if !given.is_empty() || moved {
        for key in ["secret", "secret_file"] {
            if !given.contains(&key) && stored_entry.get(key) == entry.get(key) {
                entry.remove(key);
            }
        }
    }
    let mut after = before.settings.clone();
    let servers: Vec<Value> = servers_of(&after)
        .iter()
        .map(|s| {
            if name_of(s) == Some(name) {
                Value::Object(entry.clone())
            } else {
                s.clone()
            }
        })
        .collect();
    after.insert("servers".into(), Value::Array(servers));
    store(
        storage,
        organizations,
        Change {
            id,
            actor,
            what: "server.update",
            server: Some(name),
            require_active: true,
        },
        before,
        after,
    )
    .await
}

/// Removes a RADIUS server (allowed for a disabled organization too). Its sessions' accounting
/// goes to the organization's other servers; the last server cannot be removed.
pub async fn remove_server(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    name: &str,
    actor: &str,
) -> Result<(), ChangeError> {
    let state = state_of(storage, id).await?;
    debug_assert!(guard::allows(Operation::AdminDelete, state));
    let before = stored_settings(storage, id).await?;
    if stored_server(&before.settings, name).is_none() {
        return Err(ChangeError::NoServer(id.to_string(), name.to_string()));
    }
    let servers: Vec<Value> = servers_of(&before.settings)
        .iter()
        .filter(|s| name_of(s) != Some(name))
        .cloned()
        .collect();
    if servers.is_empty() {
        // A disabled organization's servers cannot be added to (only its flag changes).
        let first = if state == OrgState::Active {
            "add another first"
        } else {
            "enable it and add another first"
        };
        return Err(ChangeError::Conflict(format!(
            "`{name}` is the last RADIUS server of organization `{id}`: {first} (or delete the organization); for an organization the configuration file lists, change its servers in the file"
        )));
    }
    let mut after = before.settings.clone();
    after.insert("servers".into(), Value::Array(servers));
    store(
        storage,
        organizations,
        Change {
            id,
            actor,
            what: "server.remove",
            server: Some(name),
            require_active: false,
        },
        before,
        after,
    )
    .await?;
    Ok(())
}

/// A JSON value whose objects name each key once — how every change's body is read (the admin
/// API's, the CLI's JSON settings files): `{"is_active": true, "is_active": false}`
/// means one thing to one parser (the last wins) and another to the next (a proxy or audit
/// tool reading the first), so it is refused rather than guessed.
pub struct StrictJson(pub Value);

/// `text` as JSON whose objects name each key once ([`StrictJson`]): the admin API's bodies
/// and the CLI's settings files are read alike.
pub fn strict_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<StrictJson>(text).map(|StrictJson(value)| value)
}

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key `{key}` is given twice"
                )));
            }
            let StrictJson(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
