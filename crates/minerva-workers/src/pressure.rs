//! System memory as the kernel reports it, and the pool's byte budget derived from it.
//!
//! [`ProcMemory`] reads `/proc/meminfo` and, inside a container, the cgroup's limit and
//! usage (v2 `memory.max`/`memory.current`, v1 `memory.limit_in_bytes`/`memory.usage_in_bytes`),
//! whichever is tighter. [`BudgetStrategy`] turns a reading into a budget: the pool may
//! grow until the system has only the strategy's reserve left free.

use std::path::{Path, PathBuf};

/// One reading of system memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemMemory {
    /// Memory the process may use at most (RAM, or the cgroup limit if lower).
    pub total: u64,
    /// Memory still available without swapping or reclaiming from others.
    pub available: u64,
}

impl SystemMemory {
    /// Fraction of `total` in use, 0..=1.
    pub fn used_fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        1.0 - self.available.min(self.total) as f64 / self.total as f64
    }
}

/// Where readings come from: the real system, or a simulation in tests.
pub trait MemorySource: Send + Sync {
    /// Reads memory now.
    fn read(&self) -> std::io::Result<SystemMemory>;
}

/// The real system: `/proc/meminfo` plus cgroup limits, read below a root directory
/// (`/` normally; a test points it at a directory of fake files).
#[derive(Debug, Clone)]
pub struct ProcMemory {
    root: PathBuf,
}

impl Default for ProcMemory {
    fn default() -> Self {
        Self::with_root("/")
    }
}

impl ProcMemory {
    /// Reads `proc/meminfo` and `sys/fs/cgroup/...` below `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The limit and usage of this process's own memory cgroup (named in
    /// `/proc/self/cgroup`; the hierarchy's root when that names none that can be read).
    fn cgroup(&self) -> Option<(u64, u64)> {
        let own = std::fs::read_to_string(self.root.join("proc/self/cgroup")).unwrap_or_default();
        let (v2_path, v1_path) = own_cgroup_paths(&own);
        let mounts = self.root.join("sys/fs/cgroup");
        let v2_dirs = [v2_path.map(|p| mounts.join(p)), Some(mounts.clone())];
        for dir in v2_dirs.iter().flatten() {
            if let (Some(limit), Some(current)) = (
                read_number(&dir.join("memory.max")),
                read_number(&dir.join("memory.current")),
            ) {
                return Some((limit, current));
            }
        }
        let v1 = mounts.join("memory");
        let v1_dirs = [v1_path.map(|p| v1.join(p)), Some(v1.clone())];
        v1_dirs.iter().flatten().find_map(|dir| {
            match (
                read_number(&dir.join("memory.limit_in_bytes")),
                read_number(&dir.join("memory.usage_in_bytes")),
            ) {
                (Some(limit), Some(usage)) => Some((limit, usage)),
                _ => None,
            }
        })
    }
}

impl MemorySource for ProcMemory {
    fn read(&self) -> std::io::Result<SystemMemory> {
        let meminfo = std::fs::read_to_string(self.root.join("proc/meminfo"))?;
        let field = |name: &str| {
            meminfo.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                Some(kib * 1024)
            })
        };
        let missing = || std::io::Error::new(std::io::ErrorKind::InvalidData, "MemTotal missing from meminfo");
        let total = field("MemTotal").ok_or_else(missing)?;
        let available = field("MemAvailable").or_else(|| field("MemFree")).unwrap_or(0);
        let mut reading = SystemMemory { total, available };
        // A cgroup limit of "max" (no limit) or above RAM leaves the RAM figures.
        if let Some((limit, usage)) = self.cgroup()
            && limit < reading.total
        {
            reading = SystemMemory {
                total: limit,
                available: reading.available.min(limit.saturating_sub(usage)),
            };
        }
        Ok(reading)
    }
}

/// The process's cgroup v2 path and cgroup v1 memory-controller path from the text of
/// `/proc/self/cgroup` (`0::/user.slice/...`, `4:memory:/docker/...`), relative to their
/// mount points; a path that climbs out (`..`) is ignored.
fn own_cgroup_paths(text: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let relative = |path: &str| {
        let path = Path::new(path.trim_start_matches('/'));
        let inside = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        (inside && !path.as_os_str().is_empty()).then(|| path.to_owned())
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if controllers.is_empty() {
            v2 = relative(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = relative(path);
        }
    }
    (v2, v1)
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// How much of the system's memory the pool leaves to everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetStrategy {
    /// Keep 60 % of memory free.
    Conservative,
    /// Keep 40 % of memory free.
    Balanced,
    /// Keep 20 % of memory free.
    Aggressive,
}

impl BudgetStrategy {
    /// The fraction of total memory to keep free.
    pub fn reserve_fraction(self) -> f64 {
        match self {
            Self::Conservative => 0.6,
            Self::Balanced => 0.4,
            Self::Aggressive => 0.2,
        }
    }

    /// The budget given a reading and the bytes the pool holds now: what the pool holds
    /// plus what is available beyond the reserve, within `[min, max]`.
    pub fn budget(self, reading: SystemMemory, pool_bytes: u64, min: u64, max: u64) -> u64 {
        let reserve = (reading.total as f64 * self.reserve_fraction()) as u64;
        let room = reading.available.saturating_sub(reserve);
        pool_bytes.saturating_add(room).clamp(min, max.max(min))
    }
}

impl std::str::FromStr for BudgetStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "conservative" => Ok(Self::Conservative),
            "balanced" => Ok(Self::Balanced),
            "aggressive" => Ok(Self::Aggressive),
            other => Err(format!(
                "unknown memory strategy {other:?} (conservative, balanced, aggressive)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn fake_root(meminfo_kib: (u64, u64), cgroup_v2: Option<(&str, u64)>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/meminfo"),
            format!(
                "MemTotal:       {} kB\nMemFree:          1000 kB\nMemAvailable:   {} kB\n",
                meminfo_kib.0, meminfo_kib.1
            ),
        )
        .unwrap();
        if let Some((max, current)) = cgroup_v2 {
            let cg = dir.path().join("sys/fs/cgroup");
            std::fs::create_dir_all(&cg).unwrap();
            std::fs::write(cg.join("memory.max"), format!("{max}\n")).unwrap();
            std::fs::write(cg.join("memory.current"), format!("{current}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn reads_meminfo() {
        let root = fake_root((16 << 20, 4 << 20), None);
        let m = ProcMemory::with_root(root.path()).read().unwrap();
        assert_eq!(
            m,
            SystemMemory {
                total: 16 * GIB,
                available: 4 * GIB
            }
        );
        assert!((m.used_fraction() - 0.75).abs() < 1e-9);
    }

    #[test]
    fn cgroup_v2_limit_is_tighter_than_ram() {
        let root = fake_root((16 << 20, 12 << 20), Some(("2147483648", GIB / 2)));
        let m = ProcMemory::with_root(root.path()).read().unwrap();
        assert_eq!(
            m,
            SystemMemory {
                total: 2 * GIB,
                available: 3 * GIB / 2
            }
        );
    }

    #[test]
    fn the_process_own_cgroup_counts_not_the_root() {
        // The root has no limit; the process's own cgroup (from /proc/self/cgroup) has 1 GiB.
        let root = fake_root((16 << 20, 12 << 20), Some(("max", 3 * GIB)));
        let own = root.path().join("sys/fs/cgroup/system.slice/minerva.service");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("memory.max"), format!("{GIB}\n")).unwrap();
        std::fs::write(own.join("memory.current"), format!("{}\n", GIB / 4)).unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        std::fs::write(
            root.path().join("proc/self/cgroup"),
            "0::/system.slice/minerva.service\n",
        )
        .unwrap();
        let m = ProcMemory::with_root(root.path()).read().unwrap();
        assert_eq!(
            m,
            SystemMemory {
                total: GIB,
                available: 3 * GIB / 4
            }
        );
    }

    #[test]
    fn cgroup_paths_come_from_proc_self_cgroup() {
        let (v2, v1) = own_cgroup_paths("12:cpu,cpuacct:/a\n4:memory:/docker/abc\n0::/user.slice/u.scope\n");
        assert_eq!(v2.as_deref(), Some(Path::new("user.slice/u.scope")));
        assert_eq!(v1.as_deref(), Some(Path::new("docker/abc")));
        // The root cgroup and paths that climb out name no directory of their own.
        assert_eq!(own_cgroup_paths("0::/\n"), (None, None));
        assert_eq!(own_cgroup_paths("0::/../../etc\n"), (None, None));
    }

    #[test]
    fn unlimited_cgroup_leaves_ram_figures() {
        let root = fake_root((16 << 20, 12 << 20), Some(("max", GIB)));
        let m = ProcMemory::with_root(root.path()).read().unwrap();
        assert_eq!(m.total, 16 * GIB);
    }

    #[test]
    fn the_real_system_reads() {
        let m = ProcMemory::default().read().unwrap();
        assert!(m.total > 0 && m.available <= m.total);
    }

    #[test]
    fn strategies_keep_their_reserve_free() {
        let reading = SystemMemory {
            total: 10 * GIB,
            available: 8 * GIB,
        };
        // The pool holds 1 GiB; 8 GiB available; conservative keeps 6 GiB free.
        assert_eq!(BudgetStrategy::Conservative.budget(reading, GIB, 0, u64::MAX), 3 * GIB);
        assert_eq!(BudgetStrategy::Balanced.budget(reading, GIB, 0, u64::MAX), 5 * GIB);
        assert_eq!(BudgetStrategy::Aggressive.budget(reading, GIB, 0, u64::MAX), 7 * GIB);
        // Bounds win.
        assert_eq!(BudgetStrategy::Aggressive.budget(reading, GIB, 0, 4 * GIB), 4 * GIB);
        let tight = SystemMemory {
            total: 10 * GIB,
            available: GIB,
        };
        assert_eq!(BudgetStrategy::Balanced.budget(tight, 0, GIB / 2, u64::MAX), GIB / 2);
    }
}
