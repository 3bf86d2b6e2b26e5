//! The server process under test, read from Linux `/proc`: found by its listening port when
//! no PID is given, and its resident memory.

use std::fs;

/// Resident set size of `pid` in MiB, if the process exists.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user and system) `pid` has used, in seconds, from `/proc/<pid>/stat` (in
/// clock ticks, 100 a second on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The process listening on TCP `port` (IPv4 or IPv6), if this user may see it: the socket's
/// inode from `/proc/net/tcp*`, then the process holding a descriptor to that socket.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the socket listening (state `0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (local_port == port && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9).map(|s| (*s).to_owned()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_socket_not_a_connection_on_the_same_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1917 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0\n\
   1: 0100007F:1917 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0\n";
        assert_eq!(listening_inode(table, 0x1917).as_deref(), Some("222"));
        assert_eq!(listening_inode(table, 80), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(rss_mib(std::process::id()).is_some_and(|r| r > 0.0));
    }

    #[test]
    fn this_process_has_used_cpu() {
        let mut spent = 0u64;
        for i in 0..20_000_000u64 {
            spent = spent.wrapping_add(i.rotate_left(7));
        }
        assert!(spent > 0);
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
    }
}
