//! Where in a TLS library file the uprobes go. A uprobe is a breakpoint: the
//! kernel either emulates the instruction under it (push, call, jmp, nop) or
//! copies it out and single-steps it, a second trap. On virtual machines the
//! single step is dear (a debug exception the hypervisor intercepts: 24 µs
//! measured on the project's VMs against 0.9 µs for an emulated `push`), and
//! OpenSSL 3's `SSL_read`/`SSL_write` open with `sub $n,%rsp`, which is
//! single-stepped.
//!
//! OpenSSL's `SSL_read_ex(s, buf, num, readbytes)` is `sub $n,%rsp; call
//! ssl_read_internal` (the arguments passed on untouched), and `SSL_read`
//! calls the same function with its own `readbytes`; likewise `SSL_write_ex`
//! and `ssl_write_internal`. Where the library's code has that shape, one
//! entry and one return probe on the shared callee follow both exported
//! functions, and its first instruction (`push` in the builds seen) is
//! emulated. Where it has not, the exported functions themselves are probed.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Where one probe goes in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    /// At a symbol the library exports (the kernel resolves nothing: aya reads
    /// the symbol's offset from the file).
    Symbol(&'static str),
    /// At a file offset: the shared callee, which has no symbol of its own in
    /// a stripped library.
    Offset(u64),
}

/// The probes of one library file: (site, program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslSites {
    pub probes: Vec<(Site, &'static str)>,
    /// How the reads and writes are followed, for the log and `status`.
    pub how: String,
}

const READ_ENTER: &str = "api_guard_ssl_read_enter";
const READ_RET: &str = "api_guard_ssl_read_ret";
const READ_EX_RET: &str = "api_guard_ssl_read_ex_ret";
/// Writes have no return probe: their socket is seen during the call, and
/// their plaintext is in the buffer at entry.
const WRITE_ENTER: &str = "api_guard_ssl_write_enter";
const HANDSHAKE: &str = "api_guard_ssl_handshake";

/// An ELF function: its virtual address and first bytes.
struct Function {
    addr: u64,
    code: Vec<u8>,
}

/// Bytes of a function looked at (the shape sits in its first instructions).
const CODE_PEEK: usize = 96;

/// The probe sites of the library (or executable) at `path`.
pub fn ssl_sites(path: &Path) -> Result<SslSites> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF file", path.display()))?;
    if file.architecture() != object::Architecture::X86_64 {
        // The shape below is x86-64 code; elsewhere probe the exported names.
        return Ok(exported(true, true));
    }
    let find = |name: &str| function(&file, &data, name);
    let read = find("SSL_read").zip(find("SSL_read_ex"));
    let write = find("SSL_write").zip(find("SSL_write_ex"));
    if find("SSL_read").is_none() {
        bail!("no SSL_read in {}", path.display());
    }
    let mut probes = vec![(Site::Symbol("SSL_do_handshake"), HANDSHAKE)];
    let mut how = Vec::new();
    match read
        .as_ref()
        .and_then(|(plain, ex)| shared_callee(&file, plain, ex))
    {
        Some(offset) => {
            probes.push((Site::Offset(offset), READ_ENTER));
            probes.push((Site::Offset(offset), READ_EX_RET));
            how.push(format!(
                "SSL_read and SSL_read_ex at their shared callee (file offset {offset:#x})"
            ));
        }
        None => {
            probes.extend(exported(true, false).probes);
            how.push("SSL_read and SSL_read_ex".into());
        }
    }
    match write
        .as_ref()
        .and_then(|(plain, ex)| shared_callee(&file, plain, ex))
    {
        Some(offset) => {
            probes.push((Site::Offset(offset), WRITE_ENTER));
            how.push(format!(
                "SSL_write and SSL_write_ex at their shared callee (file offset {offset:#x})"
            ));
        }
        None => {
            probes.extend(exported(false, true).probes);
            how.push("SSL_write and SSL_write_ex".into());
        }
    }
    Ok(SslSites {
        probes,
        how: how.join("; "),
    })
}

/// The exported functions themselves (reads, writes or both).
fn exported(reads: bool, writes: bool) -> SslSites {
    let mut probes = Vec::new();
    if reads && writes {
        probes.push((Site::Symbol("SSL_do_handshake"), HANDSHAKE));
    }
    if reads {
        probes.extend([
            (Site::Symbol("SSL_read"), READ_ENTER),
            (Site::Symbol("SSL_read"), READ_RET),
            (Site::Symbol("SSL_read_ex"), READ_ENTER),
            (Site::Symbol("SSL_read_ex"), READ_EX_RET),
        ]);
    }
    if writes {
        probes.extend([
            (Site::Symbol("SSL_write"), WRITE_ENTER),
            (Site::Symbol("SSL_write_ex"), WRITE_ENTER),
        ]);
    }
    SslSites {
        probes,
        how: "SSL_read, SSL_read_ex, SSL_write and SSL_write_ex".into(),
    }
}

/// The file offset of the function both `plain` (`SSL_read`) and `ex`
/// (`SSL_read_ex`) hand their call to, if `ex` is exactly `[endbr64] sub
/// $n,%rsp; call f` (the four argument registers untouched, so `f` gets `ex`'s
/// arguments and `ex` returns what `f` returns, clamped at 0) and `plain` holds
/// a `call f` too. None otherwise: then the exported functions are probed.
fn shared_callee(file: &object::File, plain: &Function, ex: &Function) -> Option<u64> {
    let mut at = 0;
    if ex.code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        at = 4; // endbr64
    }
    // sub $imm8, %rsp
    if ex.code.get(at..at + 3)? != [0x48, 0x83, 0xec] {
        return None;
    }
    at += 4;
    if *ex.code.get(at)? != 0xe8 {
        return None;
    }
    let target = call_target(ex.addr + at as u64, ex.code.get(at + 1..at + 5)?)?;
    // `plain` calls it too (a rel32 call from any of its first bytes: four
    // bytes naming exactly that target by chance is not a concern).
    let calls = (0..plain.code.len().saturating_sub(4)).any(|i| {
        plain.code[i] == 0xe8
            && call_target(plain.addr + i as u64, &plain.code[i + 1..i + 5]) == Some(target)
    });
    if !calls {
        return None;
    }
    file_offset(file, target)
}

/// The target of a `call rel32` at `addr` whose displacement is `rel`.
fn call_target(addr: u64, rel: &[u8]) -> Option<u64> {
    let rel = i32::from_le_bytes(rel.try_into().ok()?) as i64;
    addr.checked_add(5)?.checked_add_signed(rel)
}

/// A defined function symbol of the file, with its first bytes.
fn function(file: &object::File, data: &[u8], name: &str) -> Option<Function> {
    let sym = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(name))?;
    let addr = sym.address();
    let offset = file_offset(file, addr)?;
    let start = usize::try_from(offset).ok()?;
    let code = data.get(start..start.checked_add(CODE_PEEK)?.min(data.len()))?;
    Some(Function {
        addr,
        code: code.to_vec(),
    })
}

/// The file offset of the virtual address `addr` (in an executable section).
fn file_offset(file: &object::File, addr: u64) -> Option<u64> {
    file.sections().find_map(|s| {
        let (off, size) = s.file_range()?;
        (s.kind() == object::SectionKind::Text && addr >= s.address() && addr < s.address() + size)
            .then(|| addr - s.address() + off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system's libssl, when it is OpenSSL 3 as Debian builds it: both
    /// pairs go to shared callees, and those callees open with an emulated
    /// instruction (push), which is the point.
    #[test]
    fn the_system_libssl_is_probed_at_its_shared_callees() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let sites = ssl_sites(lib).expect("the test machine has libssl.so.3");
        let data = std::fs::read(lib).unwrap();
        let offsets: Vec<u64> = sites
            .probes
            .iter()
            .filter_map(|(s, _)| match s {
                Site::Offset(o) => Some(*o),
                Site::Symbol(_) => None,
            })
            .collect();
        assert_eq!(offsets.len(), 3, "{sites:?}");
        for o in offsets {
            let b = &data[o as usize..o as usize + 2];
            let push =
                (0x50..=0x57).contains(&b[0]) || (b[0] == 0x41 && (0x50..=0x57).contains(&b[1]));
            assert!(push, "callee at {o:#x} opens with {b:02x?}, not a push");
        }
    }

    #[test]
    fn a_file_without_ssl_read_is_an_error() {
        assert!(ssl_sites(Path::new("/proc/self/exe")).is_err());
        assert!(ssl_sites(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn shapes_other_than_sub_then_call_are_not_taken() {
        let f = |code: &[u8]| Function {
            addr: 0x1000,
            code: code.to_vec(),
        };
        // call at 0x1004 to 0x2000: rel = 0x2000 - 0x1009.
        let rel = (0x2000i32 - 0x1009).to_le_bytes();
        let ex = f(&[0x48, 0x83, 0xec, 0x08, 0xe8, rel[0], rel[1], rel[2], rel[3]]);
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let file = object::File::parse(&*exe).unwrap();
        // `plain` without the call: not shared.
        assert_eq!(shared_callee(&file, &f(&[0x90; 16]), &ex), None);
        // `ex` that moves an argument first: not taken.
        let moved = f(&[0x48, 0x89, 0xf7, 0xe8, rel[0], rel[1], rel[2], rel[3]]);
        assert_eq!(shared_callee(&file, &ex, &moved), None);
    }
}
