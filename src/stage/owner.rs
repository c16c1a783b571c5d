//! Who holds a lease: the owner string of this process (`host-pid-boot`), and whether the
//! process an owner string names is certainly dead.

/// This boot of this machine (`/proc/sys/kernel/random/boot_id`), shortened.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().filter(|c| *c != '-').take(12).collect())
        .unwrap_or_default()
}

/// The lease owner of process `pid` on this host and boot: `host-pid-boot`.
pub(crate) fn owner_id(pid: u32) -> String {
    format!("{}-{pid}-{}", hostname(), boot_id())
}

/// Whether `owner` names a process of this host and boot that no longer runs. Only then is
/// its death certain; an owner on another host (or an older format) is left to its lease.
pub(crate) fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, '-');
    let (Some(boot), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let me = boot_id();
    host == hostname()
        && !me.is_empty()
        && boot == me
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "seedq".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_dead_only_when_its_process_is_gone_on_this_boot() {
        assert!(!owner_is_dead(&owner_id(std::process::id())));
        assert!(!owner_is_dead("otherhost-1-abc"));
        assert!(!owner_is_dead("garbage"));
        // Pid 1 always runs.
        assert!(!owner_is_dead(&owner_id(1)));
        // A pid above the kernel's maximum never runs.
        assert!(owner_is_dead(&owner_id(4_194_399)));
    }
}
