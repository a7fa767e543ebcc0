//! What `vm-perf` measures: the workloads (fio job shapes) and the targets (block devices the
//! guest kernel offers, and ublk servers by profile).

/// One fio job shape. `qd` is the total number of I/Os in flight: `jobs` fio jobs (one per
/// vCPU at high depth, so every hardware queue carries load) of `qd / jobs` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    /// fio `rw=`.
    pub rw: &'static str,
    pub block_bytes: u32,
    pub qd: u32,
    pub jobs: u32,
    /// fio `rwmixread=` for mixed workloads.
    pub read_percent: Option<u32>,
}

const fn w(name: &'static str, rw: &'static str, kib: u32, qd: u32, jobs: u32) -> Workload {
    Workload {
        name,
        rw,
        block_bytes: kib * 1024,
        qd,
        jobs,
        read_percent: None,
    }
}

/// Every workload, in report order; `DEFAULT_WORKLOADS` names the ones run without
/// `--workloads`. README.md's workload table is held to this list by tidy_tests.rs.
pub const WORKLOADS: [Workload; 7] = [
    w("randread-4k-qd1", "randread", 4, 1, 1),
    w("randread-4k-qd32", "randread", 4, 32, 2),
    w("randwrite-4k-qd1", "randwrite", 4, 1, 1),
    w("randwrite-4k-qd32", "randwrite", 4, 32, 2),
    w("read-128k-qd8", "read", 128, 8, 1),
    w("write-128k-qd8", "write", 128, 8, 1),
    Workload {
        read_percent: Some(70),
        ..w("randrw70-4k-qd32", "randrw", 4, 32, 2)
    },
];

pub fn workload(name: &str) -> Result<Workload, String> {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .copied()
        .ok_or_else(|| {
            let all: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
            format!("unknown workload `{name}`; known: {}", all.join(", "))
        })
}

/// What a cell measures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The RAM disk (bio-based, no queue): the reference every ratio is taken against.
    Brd,
    /// The kernel's blk-mq memory device (`memory_backed=1`).
    NullBlk,
    /// A loop device over a file on the guest's tmpfs.
    Loop,
    /// A ublk server, by profile name or path.
    Server(String),
    /// The same server measured with the kernel's ublk trace recording (`--kernel-trace`):
    /// what the trace costs, in the same session.
    Traced(String),
}

/// A target's own queues x depth (`--targets ublk-mem@1x128`), instead of --queues/--depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub queues: u16,
    pub depth: u16,
}

impl Shape {
    /// What a shaped target's name ends with: `@1x128`.
    pub fn suffix(shape: Option<Shape>) -> String {
        shape.map_or(String::new(), |s| format!("@{}x{}", s.queues, s.depth))
    }

    /// `NAME@QxD` → (NAME, the shape); a name without `@` has none. Only multi-queue targets
    /// (null_blk, servers) take one; queues 1..=64, depth 1..=4096 like the flags.
    pub fn split(spec: &str) -> Result<(&str, Option<Shape>), String> {
        let Some((name, shape)) = spec.rsplit_once('@') else {
            return Ok((spec, None));
        };
        let bad = || {
            format!("--targets {spec}: a shape is @QUEUESxDEPTH, e.g. ublk-mem@1x128 (queues 1-64, depth 1-4096)")
        };
        let (q, d) = shape.split_once('x').ok_or_else(bad)?;
        let queues: u16 = q
            .parse()
            .ok()
            .filter(|q| (1..=64).contains(q))
            .ok_or_else(bad)?;
        let depth: u16 = d
            .parse()
            .ok()
            .filter(|d| (1..=4096).contains(d))
            .ok_or_else(bad)?;
        if name == "brd" || name == "loop" || name.is_empty() {
            return Err(format!(
                "--targets {spec}: {name:?} has no queues to shape (null_blk and servers do)"
            ));
        }
        Ok((name, Some(Shape { queues, depth })))
    }
}

/// What a traced server target's name ends with.
pub const TRACED_SUFFIX: &str = "+ktrace";

/// The kernel's own block devices `--targets` accepts; anything else names a server profile.
/// README.md lists these (tidy_tests.rs).
pub const KERNEL_TARGETS: [&str; 3] = ["brd", "null_blk", "loop"];

/// The target ratios are taken against.
pub const REFERENCE: &str = "brd";

impl Target {
    pub fn parse(name: &str) -> Target {
        match name {
            "brd" => Target::Brd,
            "null_blk" => Target::NullBlk,
            "loop" => Target::Loop,
            other => Target::Server(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::Brd => "brd",
            Target::NullBlk => "null_blk",
            Target::Loop => "loop",
            Target::Server(s) | Target::Traced(s) => s,
        }
    }

    /// The server profile a server target runs (traced or not).
    pub fn server_key(&self) -> Option<&str> {
        match self {
            Target::Server(k) | Target::Traced(k) => Some(k),
            _ => None,
        }
    }

    /// Shell that creates the device and sets `DEV` (kernel targets only).
    pub fn setup(&self, size_bytes: u64, queues: u16, depth: u16) -> Option<String> {
        let kib = size_bytes / 1024;
        let gib = size_bytes.div_ceil(1 << 30);
        Some(match self {
            Target::Brd => {
                format!("modprobe brd rd_nr=1 rd_size={kib} max_part=0 && DEV=/dev/ram0")
            }
            Target::NullBlk => format!(
                "modprobe null_blk nr_devices=1 memory_backed=1 gb={gib} bs=4096 \
                 submit_queues={queues} hw_queue_depth={depth} && DEV=/dev/nullb0"
            ),
            Target::Loop => format!(
                "modprobe loop && truncate -s {size_bytes} /run/perf-loop.img && \
                 DEV=$(losetup -f --show /run/perf-loop.img)"
            ),
            Target::Server(_) | Target::Traced(_) => return None,
        })
    }

    /// Shell that removes what `setup` created.
    pub fn teardown(&self) -> &'static str {
        match self {
            Target::Brd => "rmmod brd",
            Target::NullBlk => "rmmod null_blk",
            Target::Loop => "losetup -d \"$DEV\" && rm -f /run/perf-loop.img",
            Target::Server(_) | Target::Traced(_) => "true",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_unique_and_well_formed() {
        let mut names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), WORKLOADS.len());
        for w in WORKLOADS {
            assert!(w.qd % w.jobs == 0, "{}: qd splits evenly over jobs", w.name);
            assert!(w.name.contains(&format!("qd{}", w.qd)), "{}", w.name);
            assert!(w.name.contains(&format!("{}k", w.block_bytes / 1024)));
        }
        let e = workload("randread").unwrap_err();
        assert!(e.contains("randread-4k-qd1"), "{e}");
    }

    #[test]
    fn targets_round_trip_by_name() {
        for n in KERNEL_TARGETS
            .iter()
            .chain(["ublk-mem", "./my.yaml"].iter())
        {
            assert_eq!(Target::parse(n).name(), *n);
        }
        assert!(Target::parse("ublk-mem").setup(1 << 30, 2, 64).is_none());
        let nb = Target::NullBlk.setup(3 << 29, 2, 64).unwrap();
        assert_eq!(
            Shape::split("ublk-mem@1x128"),
            Ok((
                "ublk-mem",
                Some(Shape {
                    queues: 1,
                    depth: 128
                })
            ))
        );
        assert_eq!(
            Shape::split("./my server.yaml"),
            Ok(("./my server.yaml", None))
        );
        assert_eq!(
            Shape::suffix(Some(Shape {
                queues: 2,
                depth: 8
            })),
            "@2x8"
        );
        for bad in [
            "ublk-mem@",
            "ublk-mem@0x8",
            "ublk-mem@2x5000",
            "ublk-mem@2",
            "brd@1x1",
            "@1x2",
        ] {
            assert!(Shape::split(bad).is_err(), "{bad}");
        }
        assert!(
            nb.contains("gb=2") && nb.contains("memory_backed=1"),
            "{nb}"
        );
    }
}
