//! Field offsets of kernel structs from the kernel's own BTF
//! (/sys/kernel/btf/vmlinux). The kernel crate has no CO-RE, so the TLS
//! programs get the offsets of `struct sock` they read in a map, written at
//! load time. aya parses BTF but keeps its type access to itself: this is the
//! small reader the offsets need (structs, unions and the kinds in between).

use std::{borrow::Cow, collections::HashMap, path::Path};

use anyhow::{Context as _, Result, bail};
use api_guard_common::tls::SockOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    /// Bit offset in the struct.
    bits: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// The referenced type (typedef, const, ...).
    ty: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob: its types (id 1 onward) and string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the kernel's BTF at {} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed to read TLS connections)",
                path.display()
            )
        })?;
        Self::parse(&data).with_context(|| format!("cannot parse the BTF at {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("truncated")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("truncated")?.try_into()?,
            ))
        };
        if u16_at(0)? != 0xeb9f {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of bounds")?
            .to_vec();
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut at = hdr_len + type_off;
        let end = hdr_len + type_off + type_len;
        while at < end {
            let name = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(m + 8)?;
                        members.push(Member {
                            name: u32_at(m)?,
                            ty: u32_at(m + 4)?,
                            bits: if kind_flag { off & 0xff_ffff } else { off },
                        });
                    }
                    at += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => at += vlen * 12,
                KIND_TYPE_TAG | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT => {}
                2 | 7 | 12 | 16 => {}
                other => bail!("unknown BTF kind {other}"),
            }
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name).into_owned();
                btf.by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> Cow<'_, str> {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    /// Through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `field` in struct `name`, looking into anonymous
    /// struct and union members.
    pub fn offset(&self, name: &str, field: &str) -> Result<u32> {
        let id = *self
            .by_name
            .get(name)
            .with_context(|| format!("the kernel's BTF has no struct {name}"))?;
        let bits = self
            .find(&self.types[id as usize], field, 0)
            .with_context(|| format!("the kernel's struct {name} has no field {field}"))?;
        if bits % 8 != 0 {
            bail!("field {name}.{field} is a bit field");
        }
        Ok(bits / 8)
    }

    fn find(&self, t: &Type, field: &str, base: u32) -> Option<u32> {
        for m in &t.members {
            if m.name != 0 && self.string(m.name) == field {
                return Some(base + m.bits);
            }
        }
        for m in t.members.iter().filter(|m| m.name == 0) {
            if let Some(inner) = self.resolve(m.ty)
                && (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(found) = self.find(inner, field, base + m.bits)
            {
                return Some(found);
            }
        }
        None
    }
}

/// The offsets the TLS programs read a `struct sock *` at.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets> {
    // `struct sock` begins with its `sock_common`.
    let common = btf.offset("sock", "__sk_common")?;
    let at = |field: &str| -> Result<u32> { Ok(common + btf.offset("sock_common", field)?) };
    Ok(SockOffsets {
        daddr: at("skc_daddr")?,
        rcv_saddr: at("skc_rcv_saddr")?,
        dport: at("skc_dport")?,
        num: at("skc_num")?,
        family: at("skc_family")?,
        v6_daddr: at("skc_v6_daddr")?,
        v6_rcv_saddr: at("skc_v6_rcv_saddr")?,
        ready: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Judged by the kernel's own layout as every kernel since 4.x has it: the
    /// addresses open `sock_common`, the ports follow them, the family after.
    #[test]
    fn this_kernels_sock_offsets_are_found() {
        let btf = Btf::load(Path::new(VMLINUX)).expect("this machine's kernel has BTF");
        let o = sock_offsets(&btf).unwrap();
        assert_eq!(o.daddr, 0);
        assert_eq!(o.rcv_saddr, 4);
        assert_eq!(o.dport, 12);
        assert_eq!(o.num, 14);
        assert_eq!(o.family, 16);
        assert!(o.v6_daddr > o.family && o.v6_rcv_saddr == o.v6_daddr + 16);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
