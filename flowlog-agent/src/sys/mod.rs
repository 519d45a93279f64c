//! The few system calls neither aya 0.14 nor std wrap, one module per kernel area. All of the
//! agent's `unsafe` lives here.

pub mod attachments;
mod bpf;
mod bpffs;
mod caps;
mod clock;
mod links;
mod netlink;
mod process;
mod rcu;
pub mod ready;

pub use bpf::{
    bpf_link_update, bpf_obj_get, bpf_obj_pin, drain_hash_map, drain_hash_map_parallel,
    program_recursion_misses,
};
pub use bpffs::{is_bpffs, lock_directory, mount_bpffs};
pub use caps::keep_only_capabilities;
pub use clock::{monotonic_to_unix_offset_ns, thread_cpu_time};
pub use links::{LinkName, interface_addresses, list_links};
pub use netlink::{drain_socket, link_notifications, xdp_features};
pub use process::{kernel_release, possible_cpus, raise_open_files_limit, set_umask};
pub use rcu::{GracePeriod, wait_for_running_programs};
