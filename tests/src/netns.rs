//! Network-namespace topologies for tests, safe by construction:
//!
//! - every namespace is named `flowlog-t-<pid>-<n>` and removed, with its links and processes,
//!   when its [`NetNs`] guard drops (also while a test panics); [`sweep_stale`] removes the ones
//!   a crashed run left behind;
//! - links are only created inside test namespaces ([`veth_pair`] creates both ends in place),
//!   so the host's own interfaces are never touched;
//! - addresses come only from 198.18.0.0/15 and fd00::/8 ([`check_test_address`]);
//! - sysctls are only written under `net.`, the only tree a network namespace isolates.
//!
//! The helpers shell out to iproute2's `ip`, the tool people use to look at the result.

mod error;

use std::{
    fs::{self, File},
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex, Once,
        atomic::{AtomicU32, Ordering},
    },
};

pub use error::Error;

/// Every namespace the harness creates starts with this.
pub const NAME_PREFIX: &str = "flowlog-t-";
/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// A named network namespace, deleted with everything in it when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// Serializes `ip netns add/del` within the process: the first `add` sets up the shared mount of
/// `/var/run/netns`, which concurrent calls can race on.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static SWEEP_AT_START: Once = Once::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates `flowlog-t-<pid>-<n>`. The first call in a process also sweeps stale namespaces.
    pub fn new() -> Result<Self, Error> {
        SWEEP_AT_START.call_once(|| {
            if let Err(error) = sweep(true) {
                eprintln!("flowlog tests: sweeping stale namespaces failed: {error}");
            }
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{id}", std::process::id());
        {
            let _lock = NETNS_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run(Command::new("ip").args(["netns", "add", &name]))?;
        }
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, which `setns` and `ip netns exec` open.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`), to add arguments
    /// to and spawn; the caller owns the child (processes still inside are killed on drop).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `program args...` inside the namespace; fails unless it exits successfully.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, Error> {
        run(self.command(program).args(args))
    }

    /// Runs `ip -n <namespace> args...` and returns its standard output. A `netns` argument
    /// must name a test namespace, so no link can be moved to the host. Add addresses with
    /// [`NetNs::add_address`], which checks them.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut args_iter = args.iter();
        while let Some(arg) = args_iter.next() {
            if *arg == "netns" {
                match args_iter.next() {
                    Some(target) if target.starts_with(NAME_PREFIX) => {}
                    _ => return Err(Error::OutsideTestNamespaces(args.join(" "))),
                }
            }
        }
        ip_in(&self.name, args)
    }

    pub fn link_up(&self, ifname: &str) -> Result<(), Error> {
        check_ifname(ifname)?;
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Adds `addr/prefix_len` to a link, if the subnet lies in the test ranges. IPv6 addresses
    /// skip duplicate address detection so they are usable at once.
    pub fn add_address(
        &self,
        ifname: &str,
        addr: impl Into<IpAddr>,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let addr = addr.into();
        check_test_address(addr, prefix_len)?;
        check_ifname(ifname)?;
        let cidr = format!("{addr}/{prefix_len}");
        let mut args = vec!["addr", "add", &cidr, "dev", ifname];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// The interface index of a link in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32, Error> {
        check_ifname(ifname)?;
        let line = self.ip(&["-o", "link", "show", "dev", ifname])?;
        line.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .ok_or_else(|| Error::Io {
                context: format!("parsing the index of {ifname} from {line:?}"),
                source: io::ErrorKind::InvalidData.into(),
            })
    }

    /// Sets a `net.` sysctl inside the namespace. `key` uses dots (`net.ipv4.ip_forward`) or
    /// slashes (`net/ipv6/conf/a0.100/disable_ipv6`, needed when an interface name has a dot).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = sysctl_path(key)?;
        in_netns(self, || fs::write(&path, value))?.map_err(|source| Error::Io {
            context: format!("writing {value:?} to {} in {}", path.display(), self.name),
            source,
        })
    }

    /// Reads a `net.` sysctl inside the namespace (trimmed).
    pub fn sysctl(&self, key: &str) -> Result<String, Error> {
        let path = sysctl_path(key)?;
        in_netns(self, || fs::read_to_string(&path))?
            .map(|value| value.trim().to_owned())
            .map_err(|source| Error::Io {
                context: format!("reading {} in {}", path.display(), self.name),
                source,
            })
    }

    /// Turns IPv6 off on a link, so an idle interface sends nothing (no router or neighbour
    /// solicitations, no MLD reports). Call it before bringing the link up.
    pub fn disable_ipv6(&self, ifname: &str) -> Result<(), Error> {
        check_ifname(ifname)?;
        self.set_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = remove(&self.name) {
            eprintln!("flowlog tests: removing namespace {}: {error}", self.name);
        }
    }
}

/// Creates a veth pair with `a_name` in `a` and `b_name` in `b` (which may be the same
/// namespace). Both ends are created in place: they never exist in the host's namespace.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<(), Error> {
    check_ifname(a_name)?;
    check_ifname(b_name)?;
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])
    .map(drop)
}

/// Accepts an address only if it and its whole subnet lie in 198.18.0.0/15 or fd00::/8.
pub fn check_test_address(addr: IpAddr, prefix_len: u8) -> Result<(), Error> {
    let allowed = match addr {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 198 && b & 0xfe == 18 && (15..=32).contains(&prefix_len)
        }
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd && (8..=128).contains(&prefix_len),
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::AddressNotAllowed { addr, prefix_len })
    }
}

/// Runs `f` on the current thread inside `ns`, then moves the thread back to its namespace (also
/// when `f` panics). Sockets created in `f` stay in `ns` for their whole life; threads spawned
/// in `f` start in `ns`.
pub fn in_netns<R>(ns: &NetNs, f: impl FnOnce() -> R) -> Result<R, Error> {
    let open = |path: PathBuf| {
        File::open(&path).map_err(|source| Error::Io {
            context: format!("opening {}", path.display()),
            source,
        })
    };
    let original = open(PathBuf::from("/proc/thread-self/ns/net"))?;
    let target = open(ns.path())?;
    set_thread_netns(&target).map_err(|source| Error::Io {
        context: format!("entering namespace {}", ns.name),
        source,
    })?;
    let _restore = RestoreNetns(original);
    Ok(f())
}

/// Moves the thread back into the namespace it held on drop.
struct RestoreNetns(File);

impl Drop for RestoreNetns {
    fn drop(&mut self) {
        if let Err(error) = set_thread_netns(&self.0) {
            // A thread left in a test namespace would run later code, maybe another test, in
            // the wrong place: stop everything rather than continue.
            eprintln!("flowlog tests: cannot return to the original network namespace: {error}");
            std::process::abort();
        }
    }
}

fn set_thread_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes a descriptor that `ns` keeps open during the call and touches no
    // memory of ours; with CLONE_NEWNET it only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `flowlog-t-<pid>-*` namespaces whose process is gone (left by crashed runs), and
/// returns their names. Namespaces of live processes, such as tests running in parallel, stay.
pub fn sweep_stale() -> Result<Vec<String>, Error> {
    sweep(false)
}

/// [`sweep_stale`], and with `own_pid_is_stale` also the namespaces named after this process:
/// before it creates any, those can only come from an earlier process that had the same pid
/// (pids repeat from run to run in a fresh container).
fn sweep(own_pid_is_stale: bool) -> Result<Vec<String>, Error> {
    let own_pid = std::process::id();
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                context: format!("listing {NETNS_DIR}"),
                source,
            });
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive || (own_pid_is_stale && pid == own_pid) {
            match remove(&name) {
                Ok(()) => removed.push(name),
                // Another process sweeping at the same time removed it first.
                Err(_) if !Path::new(NETNS_DIR).join(&name).exists() => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(removed)
}

/// The pid embedded in a harness namespace name, `None` for any other namespace.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, id) = rest.split_once('-')?;
    id.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Kills the processes inside a namespace, deletes its links (so veth peers in other namespaces
/// go at once, not when the kernel gets round to freeing the namespace), then the namespace.
fn remove(name: &str) -> Result<(), Error> {
    assert!(
        name.starts_with(NAME_PREFIX),
        "refusing to remove namespace {name}"
    );
    // Best effort up to the deletion itself, which must be tried whatever happened before.
    let pids = run(Command::new("ip").args(["netns", "pids", name]))
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let own_pid = std::process::id();
    for pid in pids.split_whitespace() {
        match pid.parse::<i32>() {
            Ok(pid) if pid > 0 && pid as u32 != own_pid => {
                // SAFETY: kill has no memory effects; `pid` is a single positive process id
                // (never 0 or -1, which address groups) that `ip` found inside a test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            _ => {}
        }
    }
    let links = ip_in(name, &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "2: a0@if3: <BROADCAST,...": the name, without the peer after '@'.
        let Some(ifname) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        if ifname != "lo" {
            // Deleting one end of a veth pair deletes the other, which may be listed later.
            let _ = ip_in(name, &["link", "del", "dev", ifname]);
        }
    }
    let _lock = NETNS_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run(Command::new("ip").args(["netns", "del", name])).map(drop)
}

fn ip_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let output = run(Command::new("ip").args(["-n", netns]).args(args))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(command: &mut Command) -> Result<Output, Error> {
    let printable = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| Error::Spawn {
        command: printable.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            command: printable,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

fn check_ifname(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '@' || c == ':' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInterfaceName(name.to_owned()))
    }
}

/// `/proc/sys/...` for a `net.` key, refusing anything else.
fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    let path = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let components: Vec<&str> = path.split('/').collect();
    let plain = components
        .iter()
        .all(|c| !c.is_empty() && *c != "." && *c != "..");
    if components.len() < 2 || components[0] != "net" || !plain {
        return Err(Error::SysctlNotAllowed(key.to_owned()));
    }
    Ok(Path::new("/proc/sys").join(path))
}
