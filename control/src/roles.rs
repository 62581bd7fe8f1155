//! Who may do what: the five workspace roles and the one table from each API action to the
//! least role that may perform it. Every route of [`crate::api`] names its [`Action`]; a test
//! there fails when a route has none.
//!
//! Roles are ordered for the actions they share: `viewer` reads configuration, `auditor`
//! reads configuration and the evidence, `approver` additionally decides approvals,
//! `operator` changes keys and grants, `admin` manages the workspace and its tokens. The
//! bootstrap token is `admin` of every workspace and the only principal that creates
//! workspaces.

use serde::{Deserialize, Serialize};

/// A workspace-scoped role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Auditor,
    Approver,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Auditor,
        Role::Approver,
        Role::Operator,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Everything the API can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create a workspace: the bootstrap token only.
    WorkspaceCreate,
    /// List workspaces (a scoped principal sees its own).
    WorkspaceList,
    WorkspaceRead,
    WorkspaceUpdate,
    KeyCreate,
    KeyList,
    KeyRead,
    KeyUpdate,
    KeyRotate,
    KeyRevoke,
    TokenCreate,
    AuditRead,
    /// Who am I: any valid token.
    WhoAmI,
}

/// The least role that may perform `action` in a workspace; `None` for actions only the
/// bootstrap token may perform.
pub fn required(action: Action) -> Option<Role> {
    use Action::*;
    Some(match action {
        WorkspaceCreate => return None,
        WhoAmI | WorkspaceList | WorkspaceRead | KeyList | KeyRead => Role::Viewer,
        AuditRead => Role::Auditor,
        KeyCreate | KeyUpdate | KeyRotate | KeyRevoke => Role::Operator,
        WorkspaceUpdate | TokenCreate => Role::Admin,
    })
}

/// Whether `role` may perform `action`. Approvers and auditors are not operators: the order
/// holds for reads, and writes name their least role explicitly above.
pub fn allows(role: Role, action: Action) -> bool {
    match (required(action), role) {
        (None, _) => false,
        // An auditor reads the evidence, an approver does not (separation of duties).
        (Some(Role::Auditor), Role::Approver) => false,
        (Some(need), have) => have >= need,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_orders_roles_for_writes_and_separates_evidence() {
        assert!(allows(Role::Viewer, Action::KeyList));
        assert!(!allows(Role::Viewer, Action::KeyCreate));
        assert!(!allows(Role::Viewer, Action::AuditRead));
        assert!(allows(Role::Auditor, Action::AuditRead));
        assert!(!allows(Role::Approver, Action::AuditRead));
        assert!(allows(Role::Operator, Action::KeyRevoke));
        assert!(!allows(Role::Operator, Action::TokenCreate));
        assert!(allows(Role::Admin, Action::TokenCreate));
        assert!(!allows(Role::Admin, Action::WorkspaceCreate));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
