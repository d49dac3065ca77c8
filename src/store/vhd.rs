//! Fixed VHD: a raw image followed by a 512-byte footer (Microsoft's
//! "Virtual Hard Disk Image Format Specification", footer fields
//! big-endian). strata writes the footer after an exported image and
//! recognises it at the end of an imported one.

/// The footer's length.
pub const FOOTER: u64 = 512;
const COOKIE: &[u8; 8] = b"conectix";
const FIXED: u32 = 2;
/// Seconds from the Unix epoch to 2000-01-01T00:00:00Z, the VHD epoch.
const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry: readers (qemu among them) then take the size
/// field as the disk's size rather than cylinders × heads × sectors.
const MAX_GEOMETRY: (u16, u8, u8) = (65535, 16, 255);

/// The geometry the specification derives from a size (its appendix),
/// or the largest one when that does not give the size exactly.
fn geometry(size: u64) -> (u16, u8, u8) {
    let total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    let cyl = cth / heads;
    if cyl * heads * spt * 512 == size && cyl <= 65535 {
        (cyl as u16, heads as u8, spt as u8)
    } else {
        MAX_GEOMETRY
    }
}

fn checksum(f: &[u8; 512]) -> u32 {
    let sum: u32 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &b)| b as u32)
        .fold(0, u32::wrapping_add);
    !sum
}

/// The footer of a fixed VHD of `size` bytes (a multiple of 512), made at
/// `unix_secs`, with `id` as its unique id.
pub fn footer(size: u64, unix_secs: u64, id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let stamp = unix_secs.saturating_sub(VHD_EPOCH).min(u32::MAX as u64) as u32;
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"strt");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&FIXED.to_be_bytes());
    f[68..84].copy_from_slice(&id);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// What the last 512 bytes of a file say.
#[derive(Debug, PartialEq, Eq)]
pub enum Footer {
    /// Not a VHD footer at all.
    None,
    /// A fixed VHD whose image is this many bytes.
    Fixed(u64),
    /// A VHD footer strata cannot take, and why.
    Refused(String),
}

/// Reads a footer (the last 512 bytes of a file of `file_len` bytes).
pub fn parse(f: &[u8; 512], file_len: u64) -> Footer {
    if &f[0..8] != COOKIE {
        return Footer::None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    if u32_at(64) != checksum(f) {
        return Footer::Refused(
            "its VHD footer's checksum does not match (the file is damaged)".into(),
        );
    }
    match u32_at(60) {
        FIXED => {}
        3 | 4 => {
            return Footer::Refused(
                "it is a dynamic or differencing VHD; only fixed VHDs are taken in \
                 (convert it: qemu-img convert -f vpc -O raw FILE.vhd FILE.img)"
                    .into(),
            )
        }
        t => return Footer::Refused(format!("its VHD footer names disk type {t}, not fixed (2)")),
    }
    let size = u64::from_be_bytes(f[48..56].try_into().unwrap_or_default());
    if size.checked_add(FOOTER) != Some(file_len) {
        return Footer::Refused(format!(
            "its VHD footer says the disk is {size} bytes, but the file holds {} before it",
            file_len.saturating_sub(FOOTER)
        ));
    }
    Footer::Fixed(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips_and_damage_is_named() {
        let f = footer(10 << 20, 1_800_000_000, [7; 16]);
        assert_eq!(parse(&f, (10 << 20) + 512), Footer::Fixed(10 << 20));
        assert!(matches!(parse(&f, 10 << 20), Footer::Refused(_)));
        let mut bad = f;
        bad[100] ^= 1;
        assert!(matches!(parse(&bad, (10 << 20) + 512), Footer::Refused(_)));
        assert_eq!(parse(&[0; 512], 1024), Footer::None);
    }

    #[test]
    fn geometry_is_exact_or_the_largest() {
        // 17 sectors × 4 heads × 1 cylinder is exact; 10 MiB is not.
        assert_eq!(geometry(17 * 4 * 512), (1, 4, 17));
        assert_eq!(geometry(10 << 20), MAX_GEOMETRY);
    }
}
