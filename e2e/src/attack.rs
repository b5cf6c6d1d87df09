//! The attacker's side of the fence: [`escape`], a scripted client that tries socket tricks
//! (a chosen source port, `SO_BINDTODEVICE`, `IP_UNICAST_IF`, IPv6 scope ids), and
//! [`PacketCapture`], tcpdump on the OUTSIDE of the pod, so a test judges an attempt by what
//! really left the pod, never by the client's error alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::netns::make_world_readable;
use crate::process::{Proc, as_uid, run_in, wait_until};
use crate::servers::ProbeResult;
use crate::{Netns, PYTHON};

const ESCAPE_PY: &str = include_str!("scripts/escape.py");
const DNS_SMUGGLE_PY: &str = include_str!("scripts/dns_smuggle.py");

fn script(ns: &Netns, name: &str, body: &str) -> PathBuf {
    let path = ns.workdir().join(name);
    if !path.exists() {
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("write {name}: {e}"));
        make_world_readable(&path).unwrap_or_else(|e| panic!("chmod {name}: {e:#}"));
    }
    path
}

fn escape_script(ns: &Netns) -> PathBuf {
    script(ns, "escape.py", ESCAPE_PY)
}

/// What [`dns_smuggle`] got back.
#[derive(Debug, Clone)]
pub struct DnsReply {
    /// The response code (0 NOERROR, 1 FORMERR, 5 REFUSED), `None` without an answer.
    pub rcode: Option<u8>,
    /// The answer count.
    pub answers: u16,
    /// The raw JSON line, for messages.
    pub raw: String,
}

/// Send one crafted DNS query for `name` A to `(server, port)` as `uid` (no capabilities):
/// `mode` is `clean`, `answer`, `authority`, `additional` (a TXT record under
/// `<mark>.denied.test` in that section), `trailing` (`mark` after the message) or
/// `edns-option` (`mark` as the data of an EDNS option); over TCP when `tcp`.
pub fn dns_smuggle(
    ns: &Netns,
    uid: u32,
    (server, port): (&str, u16),
    name: &str,
    mode: &str,
    mark: &str,
    tcp: bool,
) -> DnsReply {
    let path = script(ns, "dns_smuggle.py", DNS_SMUGGLE_PY);
    let mut argv = vec![
        PYTHON.to_string(),
        path.display().to_string(),
        server.to_string(),
        port.to_string(),
        name.to_string(),
        mode.to_string(),
        mark.to_string(),
    ];
    if tcp {
        argv.push("--tcp".into());
    }
    let out = run_in(ns, as_uid(uid, uid, &argv));
    let line = out.stdout.lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("dns_smuggle.py printed no JSON ({e}): {out}"));
    DnsReply {
        rcode: v["rcode"].as_u64().and_then(|c| u8::try_from(c).ok()),
        answers: v["answers"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        raw: format!("{line} {}", out.stderr.trim()),
    }
}

/// Run `escape.py args…` in `ns` as `uid`/`uid` with every capability dropped:
/// `["udp"|"tcp", host, port, "--sport", N, "--dev", IF, "--unicast-if", IF, "--scope", IF,
/// "--timeout", S, "--payload", TEXT]`. Panics if the script itself cannot run.
pub fn escape(ns: &Netns, uid: u32, args: &[&str]) -> ProbeResult {
    let mut argv = vec![PYTHON.to_string(), escape_script(ns).display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = run_in(ns, as_uid(uid, uid, &argv));
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("escape.py printed no JSON ({e}): {out}"));
    ProbeResult {
        ok: v["ok"].as_bool().unwrap_or(false),
        stage: v["stage"].as_str().unwrap_or_default().to_string(),
        errno: v["errno"].as_str().map(str::to_string),
        recv: v["recv"].as_str().unwrap_or_default().to_string(),
        raw: format!("{line} {}", out.stderr.trim()),
    }
}

/// tcpdump writing every packet of one interface to a file, as root, in a namespace.
#[derive(Debug)]
pub struct PacketCapture {
    proc: Proc,
    file: PathBuf,
}

impl PacketCapture {
    /// Capture on `iface` of `ns` (usually the internet side of the veth: what left the
    /// pod). Waits until tcpdump really listens.
    pub fn start(ns: &Netns, iface: &str) -> anyhow::Result<PacketCapture> {
        let file = ns
            .workdir()
            .join(format!("capture-{}.pcap", crate::netns::next_serial()));
        let path = file.display().to_string();
        // --immediate-mode: every packet is handed over (and, with -U, written) as it arrives;
        // otherwise the kernel delivers blocks and whatever is pending when tcpdump stops
        // is lost.
        let proc = ns.spawn([
            "tcpdump",
            "-i",
            iface,
            "-n",
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-s",
            "256",
            "-w",
            &path,
        ])?;
        let ready = wait_until(Duration::from_secs(20), || {
            proc.stderr().contains("listening on")
        });
        anyhow::ensure!(ready, "tcpdump did not start: {}", proc.describe());
        Ok(PacketCapture { proc, file })
    }

    /// Stop capturing (SIGINT: tcpdump writes out what it holds and exits). Idempotent;
    /// [`Self::packets`] and [`Self::carried`] call it, so they see every packet sent
    /// before them.
    pub fn stop(&mut self) {
        if self.proc.try_status().is_some() {
            return;
        }
        // Let the last packets of the attempt reach the capture before it ends.
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(pid) = i32::try_from(self.proc.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if self.proc.wait_timeout(Duration::from_secs(10)).is_none() {
            self.proc.kill();
        }
    }

    /// Every packet captured, one `tcpdump -n -r` line each (IPv6 neighbour discovery and
    /// ARP left out: the pod's own links need them). Stops the capture.
    pub fn packets(&mut self) -> Vec<String> {
        self.stop();
        let path = self.file.display().to_string();
        let out = std::process::Command::new("tcpdump")
            .args([
                "-n",
                "-r",
                &path,
                "not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)",
            ])
            .output()
            .context("tcpdump -r")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tcpdump -r {path}: {stderr}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Whether any captured packet carries `needle` (a payload): the pcap file holds the
    /// first 256 bytes of every packet verbatim. Stops the capture.
    pub fn carried(&mut self, needle: &str) -> bool {
        self.stop();
        let bytes = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.file.display()));
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Packets whose line contains `needle` (an address, `host.port`, a flag).
    pub fn matching(&mut self, needle: &str) -> Vec<String> {
        self.packets()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// The capture process, for assertion messages.
    pub fn describe(&self) -> String {
        self.proc.describe()
    }
}
