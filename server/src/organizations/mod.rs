//! Organizations (tenants): their RADIUS servers and session policy, resolved from configuration,
//! and the disabled-organization guard (design.md §5).
//!
//! For now organizations come from the configuration file and the login page signs into the first
//! one; the data model and every call path already carry the organization id.

pub mod guard;

use crate::{
    config::{ConfigError, OrganizationSettings},
    radius::{NasIdentity, ServerEndpoint},
};
use regex::Regex;
use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

/// One organization, ready to use.
#[derive(Debug)]
pub struct Organization {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// False = disabled (guard denies login, refresh, Start).
    pub active: bool,
    /// How the portal presents itself as NAS for this organization.
    pub nas: NasIdentity,
    /// Window when the Accept has no Idle-Timeout.
    pub default_window: Duration,
    /// Limit when the Accept has no Session-Timeout.
    pub max_lifetime: Option<Duration>,
    /// Username pattern.
    pub username_pattern: Regex,
    /// End-to-end deadline of a login's RADIUS exchange.
    pub login_timeout: Duration,
    /// Shortest Acct-Interim-Interval honoured (RFC 2869 §5.16: not below 60 s).
    pub min_interim_interval: Duration,
    /// RADIUS servers in order of preference.
    pub servers: Vec<ServerEndpoint>,
}

impl Organization {
    /// Builds an organization from its settings (already validated: errors name the key anyway).
    pub fn from_settings(
        index: usize,
        s: &OrganizationSettings,
    ) -> Result<Organization, ConfigError> {
        let key = format!("organizations[{index}]");
        let username_pattern = Regex::new(&s.username_pattern).map_err(|e| ConfigError {
            key: format!("{key}.username_pattern"),
            problem: e.to_string(),
        })?;
        let servers = s
            .servers
            .iter()
            .enumerate()
            .map(|(j, server)| {
                Ok(ServerEndpoint {
                    name: server.name.clone(),
                    auth_addr: SocketAddr::new(server.address, server.auth_port),
                    acct_addr: SocketAddr::new(server.address, server.acct_port),
                    secret: server.load_secret(&format!("{key}.servers[{j}]"))?,
                    timeout: server.timeout,
                    retries: server.retries,
                    message_authenticator: server.require_message_authenticator,
                    status_check: server.status_check,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Organization {
            id: s.id.clone(),
            name: s.name.clone(),
            active: s.enabled,
            nas: NasIdentity {
                ip: s.nas_ip,
                identifier: s.nas_identifier.clone(),
            },
            default_window: s.default_window,
            max_lifetime: s.max_lifetime,
            username_pattern,
            login_timeout: s.login_timeout,
            min_interim_interval: s.min_interim_interval,
            servers,
        })
    }
}

/// All organizations, by id. Unknown ids resolve to `None` (the guard then denies: fail closed).
#[derive(Debug, Clone)]
pub struct Organizations {
    by_id: HashMap<String, Arc<Organization>>,
    default_id: String,
}

impl Organizations {
    /// From the configured list; the first is the default for the login page.
    pub fn from_settings(settings: &[OrganizationSettings]) -> Result<Organizations, ConfigError> {
        let mut by_id = HashMap::new();
        for (i, s) in settings.iter().enumerate() {
            by_id.insert(s.id.clone(), Arc::new(Organization::from_settings(i, s)?));
        }
        let default_id = settings
            .first()
            .map(|s| s.id.clone())
            .ok_or_else(|| ConfigError {
                key: "organizations".into(),
                problem: "at least one organization is required".into(),
            })?;
        Ok(Organizations { by_id, default_id })
    }

    /// Looks an organization up.
    pub fn get(&self, id: &str) -> Option<Arc<Organization>> {
        self.by_id.get(id).cloned()
    }

    /// The organization the login page signs into.
    pub fn default_id(&self) -> &str {
        &self.default_id
    }

    /// Every organization.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Organization>> {
        self.by_id.values()
    }
}
