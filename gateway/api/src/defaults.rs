//! The defaults every Palisade program must agree on: the sidecar's ports, the
//! UIDs of the sidecar and the agent, and the shared state dir with the files in
//! it. One place per fact: the sidecar's flags, the shim's flags, the local
//! driver and (next) the Kubernetes pod renderer all read them from here.
//!
//! Must never: hold anything a deployment cannot override (every value here is
//! the default of a flag), or depend on I/O.

/// UID the sidecar's data plane runs as; its traffic is never redirected, and
/// it is the only peer the shim accepts on its session socket.
pub const SIDECAR_UID: u32 = 1337;
/// GID of the sidecar (same number as its UID).
pub const SIDECAR_GID: u32 = SIDECAR_UID;
/// UID the agent runs as under the local driver (a pod's `runAsUser` elsewhere).
pub const AGENT_UID: u32 = 1000;
/// GID of the agent (same number as its UID).
pub const AGENT_GID: u32 = AGENT_UID;

/// Transparent egress listener (v4 and v6).
pub const OUTBOUND_PORT: u16 = 15001;
/// Policy DNS listener (udp + tcp).
pub const DNS_PORT: u16 = 15053;
/// Explicit proxy (CONNECT and absolute-form HTTP).
pub const EXPLICIT_PROXY_PORT: u16 = 15080;
/// Sidecar admin: `/live`, `/ready`, `/metrics` (never reachable by the agent).
pub const ADMIN_PORT: u16 = 15020;
/// Loopback ports reserved for the sidecar (inclusive); the agent may not
/// connect to them.
pub const SIDECAR_PORT_RANGE: (u16, u16) = (15000, 15099);

/// The shared state dir, written as a literal so that the paths below are
/// built from it at compile time.
macro_rules! state_dir {
    () => {
        "/var/run/palisade"
    };
}

/// Shared state dir (a memory emptyDir shared by the sidecar and the agent).
pub const STATE_DIR: &str = state_dir!();
/// File name, in [`STATE_DIR`], of the sidecar's ready file.
pub const READY_FILE_NAME: &str = "ready";
/// File name, in [`STATE_DIR`], of the CA bundle (system roots + sandbox CA).
pub const CA_BUNDLE_NAME: &str = "ca-bundle.pem";
/// File name, in [`STATE_DIR`], of the workload's exit status (shim → sidecar).
pub const EXIT_FILE_NAME: &str = "agent-exit";
/// File name, in [`STATE_DIR`], of the shim's exec session socket.
pub const SHIM_SOCKET_NAME: &str = "shim.sock";
/// Written by the sidecar once it can carry traffic; the shim waits for it.
pub const READY_FILE: &str = concat!(state_dir!(), "/ready");
/// The CA bundle the sidecar publishes for the agent.
pub const CA_BUNDLE: &str = concat!(state_dir!(), "/ca-bundle.pem");
/// Written by the shim with the workload's exit status.
pub const EXIT_FILE: &str = concat!(state_dir!(), "/agent-exit");
/// Unix socket the sidecar opens exec sessions on.
pub const SHIM_SOCKET: &str = concat!(state_dir!(), "/shim.sock");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_paths_are_the_state_dir_and_their_names() {
        for (path, name) in [
            (READY_FILE, READY_FILE_NAME),
            (CA_BUNDLE, CA_BUNDLE_NAME),
            (EXIT_FILE, EXIT_FILE_NAME),
            (SHIM_SOCKET, SHIM_SOCKET_NAME),
        ] {
            assert_eq!(path, format!("{STATE_DIR}/{name}"));
        }
    }

    #[test]
    fn every_sidecar_port_is_in_the_reserved_range() {
        let (lo, hi) = SIDECAR_PORT_RANGE;
        for port in [OUTBOUND_PORT, DNS_PORT, EXPLICIT_PROXY_PORT, ADMIN_PORT] {
            assert!((lo..=hi).contains(&port), "{port}");
        }
    }
}
