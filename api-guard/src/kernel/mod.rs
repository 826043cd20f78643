//! The kernel side as userspace sees it: the only code that imports aya or
//! makes raw bpf(2) calls. It imports nothing from the layers above (only the
//! leaf modules `failure` and `clock`, and `api_guard_common`).
//!
//! - `object`: the embedded kernel programs and their names;
//! - `layout`: the pin dir's names (maps, links, locks), a leaf;
//! - `source`: the `MapSource` trait (where typed access finds its maps) and
//!   `MapSet` (one task's own handles), a leaf;
//! - `maps`: typed access to every map, for any `MapSource`;
//! - `loader`: `Datapath`, the loaded programs and maps, and per-task handles;
//! - `adopt`: checks that adopted pinned state has this build's layout;
//! - `attach`: attachments, one enum with a file per kind;
//! - `pins`: the pin dir's claim, lock and links, and `Pinned` maps for commands;
//! - `preflight`: privileges and kernel features, checked before loading;
//! - `ring`: the sample ring buffer's records;
//! - `heartbeat`: the thread that tells the kernel the daemon lives;
//! - `sys`: raw bpf(2) calls aya 0.14 lacks;
//! - `usage`: the client map's identity, for the fleet sync;
//! - `btf`: struct field offsets from the kernel's BTF (for the TLS programs).

pub mod adopt;
pub mod attach;
pub mod btf;
pub mod heartbeat;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod object;
pub mod pins;
pub mod preflight;
pub mod ring;
pub mod source;
mod sys;
pub mod usage;

pub use attach::{Attached, Attachment};
pub use loader::{Datapath, LoadOptions, MapMemory};
pub use maps::{Client, Counters, KernelMaps, LpmKey, PolicyTables};
pub use source::{MapSet, MapSource};
