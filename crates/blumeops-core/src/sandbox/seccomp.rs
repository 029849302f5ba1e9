//! The seccomp filter every step runs under, modelled on Docker's default profile for a
//! container with the default capabilities: what that profile refuses, this refuses too,
//! with EPERM (not a kill), so tools fall back as they do under Docker.
//!
//! Refused:
//! - mounting and switching roots: `mount`, `umount2`, `pivot_root`, the new mount API
//!   (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`,
//!   `mount_setattr`);
//! - new namespaces: `unshare` and `clone` with any namespace flag, `setns`; `clone3` gets
//!   ENOSYS (its flags are out of a filter's reach), so libc falls back to `clone`;
//! - kernel keyrings (`keyctl`, `add_key`, `request_key`), `bpf`, `perf_event_open`,
//!   `userfaultfd`, module loading (`init_module`, `finit_module`, `delete_module`),
//!   `kexec_load`, `kexec_file_load`, `open_by_handle_at`, `swapon`, `swapoff`, `reboot`,
//!   setting clocks (`settimeofday`, `clock_settime`, `clock_adjtime`), `acct`,
//!   `quotactl`, `lookup_dcookie`, `vhangup`, `syslog`;
//! - device nodes: `mknod`/`mknodat` of a block device, or of a character device other
//!   than 0/0 (an overlay whiteout, which package managers and overlay tools create).
//!
//! `ptrace` stays allowed: a step's PID namespace holds only its own processes.
//!
//! The program is compiled with seccompiler for the architecture blumeops runs on (x86_64
//! or aarch64; elsewhere no filter is installed and `doctor` would say so). It is built
//! before the sandbox forks and installed by the step's init right before it drops
//! capabilities, so no `no_new_privs` is needed and setuid programs in the image keep
//! working.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Namespace flags of `clone` (CLONE_NEWTIME shares its bit with the exit signal there).
const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// `CLONE_NEWTIME`, for `unshare`.
const CLONE_NEWTIME: u64 = 0x80;

/// Syscalls refused whatever their arguments.
fn always_refused() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_open_by_handle_at,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_lookup_dcookie,
        libc::SYS_vhangup,
        libc::SYS_syslog,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS__sysctl,
        libc::SYS_nfsservctl,
    ]);
    calls
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has a condition")
}

/// One rule per flag: the call matches when any of `flags` is set in argument `arg`.
fn any_flag(arg: u8, len: fn() -> SeccompCmpArgLen, flags: &[u64]) -> Vec<SeccompRule> {
    flags
        .iter()
        .map(|&f| rule(vec![cond(arg, len(), SeccompCmpOp::MaskedEq(f), f)]))
        .collect()
}

/// Rules for a `mknod`-like call with the mode at `mode` and the device at `dev`: block
/// devices, and character devices other than 0/0.
fn device_nodes(mode: u8, dev: u8) -> Vec<SeccompRule> {
    let ifmt = u64::from(libc::S_IFMT);
    vec![
        rule(vec![cond(
            mode,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(ifmt),
            u64::from(libc::S_IFBLK),
        )]),
        rule(vec![
            cond(
                mode,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(ifmt),
                u64::from(libc::S_IFCHR),
            ),
            cond(dev, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0),
        ]),
    ]
}

fn target_arch() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(TargetArch::aarch64)
    } else {
        None
    }
}

/// Build the filters for this architecture: the refusals (EPERM), then `clone3` (ENOSYS).
/// seccompiler gives one action to every rule of a filter, so these are two programs; the
/// kernel runs every installed filter and takes the strictest answer.
fn build() -> Result<Vec<BpfProgram>, String> {
    let Some(arch) = target_arch() else {
        return Ok(Vec::new());
    };
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = always_refused()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let mut unshare_flags = CLONE_NS_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    refused.insert(
        libc::SYS_unshare,
        any_flag(0, || SeccompCmpArgLen::Dword, &unshare_flags),
    );
    refused.insert(
        libc::SYS_clone,
        any_flag(0, || SeccompCmpArgLen::Qword, &CLONE_NS_FLAGS),
    );
    refused.insert(libc::SYS_mknodat, device_nodes(2, 3));
    #[cfg(target_arch = "x86_64")]
    refused.insert(libc::SYS_mknod, device_nodes(1, 2));
    let compile = |rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32| {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| format!("failed to build the seccomp filter: {e}"))?;
        BpfProgram::try_from(filter)
            .map_err(|e| format!("failed to compile the seccomp filter: {e}"))
    };
    Ok(vec![
        compile(refused, libc::EPERM)?,
        compile(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            libc::ENOSYS,
        )?,
    ])
}

/// The filters to install in every step, built once per process (empty on architectures
/// without a filter).
pub(super) fn filters() -> Result<&'static [BpfProgram], String> {
    static FILTERS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    FILTERS
        .get_or_init(build)
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_architecture() {
        let filters = filters().unwrap();
        if target_arch().is_some() {
            assert_eq!(filters.len(), 2);
            assert!(filters.iter().all(|p| !p.is_empty() && p.len() < 4096));
        } else {
            assert!(filters.is_empty());
        }
    }
}
