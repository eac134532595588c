//! The disabled-organization guard: one pure function that every path asks before acting
//! (design.md §5). No I/O: callers pass the organization's state as they know it.

/// An operation subject to the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Access-Request for a login.
    Login,
    /// Accounting-Start of a new session (also when a queued retry runs).
    AccountingStart,
    /// User refresh of an existing session.
    Refresh,
    /// Interim-Update of an existing session.
    InterimUpdate,
    /// User disconnect → Stop.
    Disconnect,
    /// Expiry → Stop.
    Expiry,
    /// Reading one's own session status.
    ReadOwnSession,
    /// Incoming CoA-Request (RFC 5176) for one of the organization's sessions: a disabled
    /// organization's sessions get no new authorization (NAK).
    CoaRequest,
    /// Incoming Disconnect-Request (RFC 5176): ACK and stop, whatever the state.
    DisconnectRequest,
    /// Admin (API or CLI) reads the organization or its objects.
    AdminRead,
    /// Admin deletes the organization or one of its objects.
    AdminDelete,
    /// Admin creates an object of the organization.
    AdminCreate,
    /// Admin changes the organization or its objects (other than the active flag).
    AdminUpdate,
    /// Admin enables or disables the organization: always possible.
    SetActive,
}

/// What the organization's state is, as the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrgState {
    /// Exists and is enabled.
    Active,
    /// Exists and is disabled.
    Disabled,
    /// Not known: treated as disabled (fail closed).
    Unknown,
}

impl OrgState {
    /// From an optional "is active" flag.
    pub fn from_active(active: Option<bool>) -> OrgState {
        match active {
            Some(true) => OrgState::Active,
            Some(false) => OrgState::Disabled,
            None => OrgState::Unknown,
        }
    }
}

/// Whether `operation` may proceed for an organization in `state`.
pub fn allows(operation: Operation, state: OrgState) -> bool {
    match state {
        OrgState::Active => true,
        OrgState::Disabled | OrgState::Unknown => match operation {
            Operation::Login
            | Operation::AccountingStart
            | Operation::Refresh
            | Operation::CoaRequest
            | Operation::AdminCreate
            | Operation::AdminUpdate => false,
            // Ending and observing sessions must always work: a session that cannot be stopped
            // keeps a firewall identity alive.
            Operation::InterimUpdate
            | Operation::Disconnect
            | Operation::Expiry
            | Operation::ReadOwnSession
            | Operation::DisconnectRequest
            | Operation::AdminRead
            | Operation::AdminDelete
            | Operation::SetActive => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;
    use OrgState::*;

    #[test]
    fn guard_table_covers_every_operation_and_state() {
        let table = [
            (Login, [true, false, false]),
            (AccountingStart, [true, false, false]),
            (Refresh, [true, false, false]),
            (InterimUpdate, [true, true, true]),
            (Disconnect, [true, true, true]),
            (Expiry, [true, true, true]),
            (ReadOwnSession, [true, true, true]),
            (CoaRequest, [true, false, false]),
            (DisconnectRequest, [true, true, true]),
            (AdminRead, [true, true, true]),
            (AdminDelete, [true, true, true]),
            (AdminCreate, [true, false, false]),
            (AdminUpdate, [true, false, false]),
            (SetActive, [true, true, true]),
        ];
        for (op, expected) in table {
            for (state, want) in [Active, Disabled, Unknown].into_iter().zip(expected) {
                assert_eq!(allows(op, state), want, "{op:?} in {state:?}");
            }
        }
    }

    #[test]
    fn unknown_organization_fails_closed() {
        assert_eq!(OrgState::from_active(None), Unknown);
        assert!(!allows(Login, OrgState::from_active(None)));
    }
}
