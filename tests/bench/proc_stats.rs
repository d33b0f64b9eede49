//! Resident memory and CPU time of processes, read from /proc.

pub(crate) use parley_tests::rss_kib;

/// User plus system CPU seconds a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second here).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Proportional set size in KiB (`Pss` of `/proc/<pid>/smaps_rollup`), or
/// 0 when unreadable: each shared page counted once over the processes
/// that map it, so the sum over Postgres's processes counts its shared
/// buffers once, where their resident sizes would count them in each.
pub(crate) fn pss_kib(pid: u32) -> u64 {
    parley_tests::proc_kib(pid, "smaps_rollup", "Pss:")
}

/// Seconds the process's threads have spent runnable but waiting for a
/// CPU (the second field of each `/proc/<pid>/task/*/schedstat`): on a
/// machine shared by many processes, the share of latency that is queueing
/// for a core rather than work.
pub(crate) fn run_queue_wait_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let waited_ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    waited_ns as f64 / 1e9
}

/// Open file descriptors of a process (sockets included), or 0 when
/// unreadable.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// OS threads of a process, or 0 when unreadable.
pub(crate) fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |dir| dir.count())
}

/// Every process whose command name (`/proc/<pid>/comm`) is `name`.
pub(crate) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}
