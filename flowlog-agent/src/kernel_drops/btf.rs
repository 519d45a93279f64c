//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) for the drop program: struct
//! member offsets (through anonymous structs and unions), enum values, and the parameters of a
//! tracepoint's prototype.
//!
//! aya parses BTF too, but does not expose member offsets or enum values; the format is small
//! (a header, fixed-size type records with kind-specific tails, a string table), so it is read
//! here directly.

use std::{collections::HashMap, fmt};

/// The running kernel's type information.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BtfError {}

fn error(message: impl Into<String>) -> BtfError {
    BtfError(message.into())
}

struct Type {
    name: u32,
    kind: u32,
    /// Size for structs, unions, enums and ints; the referenced type for pointers, typedefs,
    /// qualifiers and prototypes (return type).
    size_or_type: u32,
    /// Members `(name, type, bit offset)` of structs and unions; `(name, value)` of enums as
    /// `(name, 0, value)`; parameters of prototypes as `(name, type, 0)`.
    members: Vec<(u32, u32, u64)>,
}

/// Parsed BTF.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|e| error(format!("reading {VMLINUX}: {e}")))?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |offset: usize| -> Result<u32, BtfError> {
            data.get(offset..offset + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| error("truncated BTF"))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(error("not little-endian BTF"));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| error("truncated BTF strings"))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        // Type id 0 is `void`.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = start;
        while at < end {
            let name = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let base = at + 12 * i;
                        let offset = u32_at(base + 8)?;
                        let bits = if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((u32_at(base)?, u32_at(base + 4)?, bits as u64));
                    }
                    at += 12 * vlen;
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let base = at + 8 * i;
                        members.push((u32_at(base)?, 0, u32_at(base + 4)? as u64));
                    }
                    at += 8 * vlen;
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let base = at + 12 * i;
                        let value = u32_at(base + 4)? as u64 | (u32_at(base + 8)? as u64) << 32;
                        members.push((u32_at(base)?, 0, value));
                    }
                    at += 12 * vlen;
                }
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        let base = at + 8 * i;
                        members.push((u32_at(base)?, u32_at(base + 4)?, 0));
                    }
                    at += 8 * vlen;
                }
                KIND_DATASEC => at += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => return Err(error(format!("unknown BTF kind {other}"))),
            }
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                btf.by_name.entry((name, ty.kind)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn id(&self, name: &str, kind: u32) -> Option<u32> {
        self.by_name.get(&(name.to_owned(), kind)).copied()
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `path` (member names, e.g. `["nd_net", "net"]`) inside struct `name`,
    /// looking through anonymous structs and unions at each step.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self
            .id(name, KIND_STRUCT)
            .ok_or_else(|| error(format!("no struct {name} in the kernel's BTF")))?;
        let mut offset_bits = 0u64;
        for member in path {
            let (bits, member_type) = self
                .find_member(id, member, 0)
                .ok_or_else(|| error(format!("struct {name} has no member {}", path.join("."))))?;
            offset_bits += bits;
            id = self.resolve(member_type);
        }
        if !offset_bits.is_multiple_of(8) {
            return Err(error(format!("{name}.{} is a bit field", path.join("."))));
        }
        Ok((offset_bits / 8) as u32)
    }

    /// `(bit offset, type)` of a member of the struct or union `id`, searching anonymous
    /// members depth first.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u64, u32)> {
        let ty = self.ty(self.resolve(id))?;
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for (name, member_type, bits) in &ty.members {
            if *name != 0 && self.string(*name) == member {
                return Some((*bits, *member_type));
            }
        }
        for (name, member_type, bits) in &ty.members {
            if *name == 0
                && let Some((inner, found)) = self.find_member(*member_type, member, depth + 1)
            {
                return Some((bits + inner, found));
            }
        }
        None
    }

    /// The values and names of enum `name`.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(u64, &str)>> {
        let id = self
            .id(name, KIND_ENUM)
            .or_else(|| self.id(name, KIND_ENUM64))?;
        let ty = self.ty(id)?;
        Some(
            ty.members
                .iter()
                .map(|(name, _, value)| (*value, self.string(*name)))
                .collect(),
        )
    }

    /// Parameters of the prototype behind typedef `name` (a pointer to a function prototype,
    /// as the kernel declares `btf_trace_<tracepoint>`).
    pub fn prototype_params(&self, typedef: &str) -> Option<usize> {
        let id = self.id(typedef, KIND_TYPEDEF)?;
        let mut ty = self.ty(self.resolve(id))?;
        if ty.kind == KIND_PTR {
            ty = self.ty(self.resolve(ty.size_or_type))?;
        }
        (ty.kind == KIND_FUNC_PROTO).then_some(ty.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little BTF blob: `struct outer { int a; union { struct inner *p; long q; }; }`,
    /// `struct inner { int x; int y; }`, `enum e { E_ONE = 1, E_TWO = 2 }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0outer\0a\0p\0q\0inner\0x\0y\0e\0E_ONE\0E_TWO\0long\0".to_vec();
        let at = |name: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        let s = |name| at(name, &strings);
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: long
        push(&[s("long"), KIND_INT << 24, 8, 64]);
        // 3: struct inner { int x @0; int y @32 }
        push(&[s("inner"), KIND_STRUCT << 24 | 2, 8]);
        push(&[s("x"), 1, 0, s("y"), 1, 32]);
        // 4: struct inner *
        push(&[0, KIND_PTR << 24, 3]);
        // 5: anonymous union { struct inner *p; long q; }
        push(&[0, KIND_UNION << 24 | 2, 8]);
        push(&[s("p"), 4, 0, s("q"), 2, 0]);
        // 6: struct outer { int a @0; union @64 }
        push(&[s("outer"), KIND_STRUCT << 24 | 2, 16]);
        push(&[s("a"), 1, 0, 0, 5, 64]);
        // 7: enum e
        push(&[s("e"), KIND_ENUM << 24 | 2, 4]);
        push(&[s("E_ONE"), 1, s("E_TWO"), 2]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn members_are_found_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", &["a"]), Ok(0));
        assert_eq!(btf.member_offset("outer", &["q"]), Ok(8));
        assert_eq!(btf.member_offset("inner", &["y"]), Ok(4));
        assert!(btf.member_offset("outer", &["z"]).is_err());
        assert!(btf.member_offset("nothing", &["a"]).is_err());
        assert_eq!(btf.enum_values("e"), Some(vec![(1, "E_ONE"), (2, "E_TWO")]));
    }

    #[test]
    fn the_running_kernel_describes_what_the_drop_program_reads() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no {VMLINUX}: skipped");
            return;
        };
        for (name, path) in [
            ("sk_buff", &["len"][..]),
            ("sk_buff", &["dev"]),
            ("sk_buff", &["skb_iif"]),
            ("net_device", &["ifindex"]),
            ("net", &["ns", "inum"]),
        ] {
            btf.member_offset(name, path).unwrap();
        }
    }
}
