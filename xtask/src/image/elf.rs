//! Just enough ELF64 (little-endian) reading for kernel images and modules: section lookup
//! (`.modinfo`), the dynamic-loader check (static guest binaries), the PVH entry note and the
//! shared libraries a dynamic object needs (the guest tools layer's library closure).
//! All offsets are bounds-checked: a malformed file is an error, never a panic.

use crate::util::Result;

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point QEMU needs to boot an uncompressed vmlinux.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
    .ok()
}

fn check_header(b: &[u8]) -> Result<()> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    Ok(())
}

/// Program headers as (type, file offset, file size).
fn program_headers(b: &[u8]) -> Result<Vec<(u32, usize, usize)>> {
    check_header(b)?;
    let bad = || "truncated ELF program header table".to_string();
    let phoff = u64_at(b, 0x20).ok_or_else(bad)?;
    let phentsize = u16_at(b, 0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(b, 0x38).ok_or_else(bad)? as usize;
    (0..phnum)
        .map(|i| {
            let p = phoff
                .checked_add(i.checked_mul(phentsize).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            Ok((
                u32_at(b, p).ok_or_else(bad)?,
                u64_at(b, p.checked_add(8).ok_or_else(bad)?).ok_or_else(bad)?,
                u64_at(b, p.checked_add(32).ok_or_else(bad)?).ok_or_else(bad)?,
            ))
        })
        .collect()
}

/// True if the binary needs no dynamic loader (statically linked).
pub fn is_static(b: &[u8]) -> Result<bool> {
    Ok(!program_headers(b)?.iter().any(|(t, _, _)| *t == PT_INTERP))
}

/// True if the ELF carries a Xen PHYS32_ENTRY note, i.e. QEMU can boot it directly via PVH.
pub fn has_pvh_note(b: &[u8]) -> Result<bool> {
    for (t, off, size) in program_headers(b)? {
        if t != PT_NOTE {
            continue;
        }
        let seg = b
            .get(off..off.saturating_add(size))
            .ok_or("ELF note segment out of bounds")?;
        let mut p = 0;
        while p + 12 <= seg.len() {
            let namesz = u32_at(seg, p).unwrap() as usize;
            let descsz = u32_at(seg, p + 4).unwrap() as usize;
            let ntype = u32_at(seg, p + 8).unwrap();
            let name = seg
                .get(p + 12..)
                .and_then(|s| s.get(..namesz))
                .unwrap_or(&[]);
            if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                return Ok(true);
            }
            let step = namesz
                .div_ceil(4)
                .saturating_mul(4)
                .saturating_add(descsz.div_ceil(4).saturating_mul(4));
            p = p.saturating_add(12).saturating_add(step);
        }
    }
    Ok(false)
}

/// The bytes of the named section, if present.
pub fn section<'a>(b: &'a [u8], want: &str) -> Result<Option<&'a [u8]>> {
    check_header(b)?;
    let bad = || "truncated ELF section table".to_string();
    let shoff = u64_at(b, 0x28).ok_or_else(bad)?;
    let shentsize = u16_at(b, 0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(b, 0x3c).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(b, 0x3e).ok_or_else(bad)? as usize;
    let sh = |i: usize| -> Result<(u32, usize, usize)> {
        let p = shoff
            .checked_add(i.checked_mul(shentsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        Ok((
            u32_at(b, p).ok_or_else(bad)?,
            u64_at(b, p.checked_add(0x18).ok_or_else(bad)?).ok_or_else(bad)?,
            u64_at(b, p.checked_add(0x20).ok_or_else(bad)?).ok_or_else(bad)?,
        ))
    };
    if shstrndx >= shnum {
        return Ok(None);
    }
    let (_, str_off, str_size) = sh(shstrndx)?;
    let names = b
        .get(str_off..str_off.saturating_add(str_size))
        .ok_or_else(bad)?;
    for i in 0..shnum {
        let (name_off, off, size) = sh(i)?;
        let name = names.get(name_off as usize..).unwrap_or(&[]);
        let name = &name[..name.iter().position(|c| *c == 0).unwrap_or(name.len())];
        if name == want.as_bytes() {
            return Ok(Some(b.get(off..off.saturating_add(size)).ok_or_else(bad)?));
        }
    }
    Ok(None)
}

const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// What the dynamic loader reads from a dynamic ELF object.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// DT_NEEDED sonames.
    pub needed: Vec<String>,
    /// DT_RUNPATH / DT_RPATH directories, as written (`$ORIGIN` unexpanded).
    pub runpath: Vec<String>,
}

/// The dynamic section of an ELF object; empty for a static one.
pub fn dynamic(b: &[u8]) -> Result<Dynamic> {
    let Some(section) = section(b, ".dynamic")? else {
        return Ok(Dynamic::default());
    };
    let strtab = section_or_err(b, ".dynstr")?;
    let string = |val: u64| -> Result<String> {
        let s = usize::try_from(val)
            .ok()
            .and_then(|o| strtab.get(o..))
            .ok_or("a dynamic entry points outside .dynstr")?;
        let end = s.iter().position(|c| *c == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut out = Dynamic::default();
    for entry in section.chunks_exact(16) {
        let tag = u64::from_le_bytes(entry[..8].try_into().expect("16-byte chunk"));
        let val = u64::from_le_bytes(entry[8..].try_into().expect("16-byte chunk"));
        match tag {
            DT_NULL => break,
            DT_NEEDED => out.needed.push(string(val)?),
            DT_RPATH | DT_RUNPATH => out.runpath.extend(
                string(val)?
                    .split(':')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    Ok(out)
}

fn section_or_err<'a>(b: &'a [u8], name: &str) -> Result<&'a [u8]> {
    section(b, name)?.ok_or_else(|| format!("a .dynamic section without {name}"))
}

/// `key=value` pairs of a kernel module's `.modinfo` section.
pub fn modinfo(b: &[u8]) -> Result<Vec<(String, String)>> {
    let sec = section(b, ".modinfo")?.ok_or("no .modinfo section: not a kernel module")?;
    Ok(sec
        .split(|c| *c == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_parse() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked on the host toolchain.
        assert!(!is_static(&me).unwrap());
        assert!(section(&me, ".text").unwrap().is_some());
        assert!(section(&me, ".no-such").unwrap().is_none());
        assert!(!has_pvh_note(&me).unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(is_static(b"hello").is_err());
        let mut fake = b"\x7fELF\x02\x01".to_vec();
        fake.resize(64, 0xff);
        assert!(is_static(&fake).is_err());
        assert!(
            section(&fake, ".modinfo").is_err() || section(&fake, ".modinfo").unwrap().is_none()
        );
        assert!(modinfo(b"\x7fELF").is_err());
        // Every truncation of a real binary's header region must be handled.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for n in [0, 10, 63, 64, 100, 4096] {
            let _ = is_static(&me[..n]);
            let _ = section(&me[..n], ".text");
            let _ = has_pvh_note(&me[..n]);
        }
    }
}
