//! Which container a process runs in, from `/proc/PID/cgroup`: the 64-hex-digit id a container
//! runtime puts in its cgroup's path (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
//! `crio-<id>.scope`, `/docker/<id>`), and the pod UID in kubelet's cgroups
//! (`kubepods-burstable-pod<uid>.slice`, with `_` for `-`, or `/kubepods/burstable/pod<uid>/`).

/// Empty when the process is in no container, or no pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_uid: String,
}

pub fn of(pid: u32) -> Container {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|text| parse(&text)).unwrap_or_default()
}

fn parse(cgroups: &str) -> Container {
    let mut container = Container::default();
    for path in cgroups.lines().filter_map(|line| line.splitn(3, ':').nth(2)) {
        for part in path.split('/') {
            let part = part.strip_suffix(".scope").or_else(|| part.strip_suffix(".slice")).unwrap_or(part);
            let id = part.rsplit(['-', ':']).next().unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                container.id = id.to_string();
            }
            if let Some(at) = part.rfind("pod") {
                let uid = part[at + 3..].replace('_', "-");
                if uid.len() == 36 && uid.bytes().all(|byte| byte.is_ascii_hexdigit() || byte == b'-') {
                    container.pod_uid = uid;
                }
            }
        }
    }
    container
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f0b9e3c1a2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

    #[test]
    fn container_ids_and_pod_uids_are_read_from_the_runtimes_cgroup_paths() {
        let kubelet = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod3f1e2d4c_5b6a_4978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            parse(&kubelet),
            Container { id: ID.to_string(), pod_uid: "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b".to_string() }
        );
        let cgroupfs = format!("0::/kubepods/besteffort/pod3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b/{ID}\n");
        assert_eq!(parse(&cgroupfs).pod_uid, "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b");
        assert_eq!(parse(&cgroupfs).id, ID);
        assert_eq!(parse(&format!("0::/system.slice/docker-{ID}.scope\n")).id, ID);
        assert_eq!(parse("0::/user.slice/user-0.slice/session-3.scope\n"), Container::default());
    }
}
