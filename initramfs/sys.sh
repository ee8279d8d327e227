# stackboot boot core: every external effect goes through these sb_sys_* functions
# (and the path variables below), so a test can redefine them after sourcing.

: "${SB_RUN=/run}"
: "${SB_DEV=/dev}"
: "${SB_SYS_BLOCK=/sys/class/block}"
: "${SB_SYS_MODULE=/sys/module}"
: "${SB_PROC_MOUNTS=/proc/mounts}"
: "${SB_CMDLINE_FILE=/proc/cmdline}"
: "${SB_PROC_FILESYSTEMS=/proc/filesystems}"

# sb_sys_mount ARGS...: mount(8).
sb_sys_mount() { mount "$@"; }
# sb_sys_umount DIR: umount(8); -d also frees a loop device (busybox).
sb_sys_umount() { umount "$@"; }
# sb_sys_mount_layer FILE DIR: a squashfs file read-only on a loop device.
sb_sys_mount_layer() { mount -t squashfs -o ro,loop "$1" "$2"; }
# sb_sys_umount_layer DIR: unmount a layer and free its loop device.
sb_sys_umount_layer() { umount -d "$1" 2>/dev/null || umount "$1"; }
# sb_sys_losetup ARGS...: losetup(8) (not used by the boot path, kept for templates).
sb_sys_losetup() { losetup "$@"; }
# sb_sys_modprobe MOD: load one kernel module.
sb_sys_modprobe() { modprobe "$1"; }
# sb_sys_reboot: reboot now (the initramfs has no init to ask).
sb_sys_reboot() {
	sync
	reboot -f 2>/dev/null
	# no reboot applet (a dracut initrd without busybox): ask the kernel directly
	[ -w /proc/sysrq-trigger ] && echo b >/proc/sysrq-trigger
}
# sb_sys_sleep SECS
sb_sys_sleep() { sleep "$1"; }
# sb_sys_now: epoch seconds.
sb_sys_now() { date +%s; }
# sb_sys_shell: an emergency shell on the console.
sb_sys_shell() {
	if [ -c /dev/console ]; then
		sh -i </dev/console >/dev/console 2>&1
	else
		sh -i
	fi
}
# sb_sys_kernel_release: the running kernel's release (uname -r).
sb_sys_kernel_release() { uname -r; }
# sb_sys_has_kexec: true when this initrd has kexec(8) (kexec-tools).
sb_sys_has_kexec() { command -v kexec >/dev/null 2>&1; }
# sb_sys_kexec_load KERNEL INITRD DTB CMDLINE: load the next kernel. kexec_file_load (-s)
# first: the kernel itself parses the image (and checks its signature where the kernel
# asks for one); the older kexec_load when the kernel refuses it or a device tree is
# given (arm64's kexec_file_load takes the running one; Debian's arm64 kernels have no
# kexec_file_load at all). With kexec_load, kexec-tools' purgatory hashes every loaded
# segment again between the jump and the new kernel; on arm64 it runs with the caches
# off, which takes tens of seconds to minutes on real boards (and ~28 s under QEMU) for a
# check of memory the hook filled a moment before from files whose sha256 it had just
# checked against the manifest: --no-checks (when this kexec has it) skips it.
sb_sys_kexec_load() {
	if [ -z "$3" ] && kexec -s -l "$1" --initrd="$2" --command-line="$4"; then
		return 0
	fi
	kexec -l $(sb__kexec_nochecks) "$1" --initrd="$2" ${3:+--dtb="$3"} --command-line="$4"
}
# sb__kexec_nochecks: `--no-checks` when this kexec has it.
sb__kexec_nochecks() {
	case "$(kexec --help 2>&1)" in *--no-checks*) echo --no-checks ;; esac
}
# sb_sys_kexec_exec: jump into the loaded kernel (returns only when that fails).
sb_sys_kexec_exec() { kexec -e; }
# sb_sys_fsync PATH: flush one file or directory (falls back to a global sync).
sb_sys_fsync() { sync "$1" 2>/dev/null || sync; }

# sb_sys_fslabel DEV: print the filesystem label of DEV (empty when none).
# Uses blkid when the root has one, else reads the ext2/3/4 superblock
# (magic 0xEF53 at byte 1080, 16-byte label at byte 1144) or the FAT boot sector
# ("FAT32   " at byte 82 and the 11-byte label at 71; "FAT12/16" at 54, label at 43):
# Debian's busybox has no blkid.
sb_sys_fslabel() {
	local dev="$1" out magic at
	if command -v blkid >/dev/null 2>&1; then
		out=$(blkid "$dev" 2>/dev/null)
		case "$out" in
		*' LABEL="'*)
			out=${out#*' LABEL="'}
			printf '%s\n' "${out%%\"*}"
			return 0
			;;
		esac
		[ -n "$out" ] && return 0
	fi
	magic=$(dd if="$dev" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
	if [ "$magic" = 53ef ]; then
		dd if="$dev" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000'
		echo
		return 0
	fi
	[ "$(dd if="$dev" bs=1 skip=510 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 55aa ] || return 0
	case "$(dd if="$dev" bs=1 skip=82 count=8 2>/dev/null)" in
	'FAT32   ') at=71 ;;
	*) case "$(dd if="$dev" bs=1 skip=54 count=8 2>/dev/null)" in 'FAT12   ' | 'FAT16   ') at=43 ;; *) return 0 ;; esac ;;
	esac
	out=$(dd if="$dev" bs=1 skip=$at count=11 2>/dev/null | tr -d '\000')
	# blank-padded; "NO NAME" is FAT's "no label"
	while [ "${out% }" != "$out" ]; do out=${out% }; done
	[ "$out" = "NO NAME" ] || printf '%s\n' "$out"
}

# sb_sys_partname DEV_NAME: the GPT partition name from sysfs (empty when none).
sb_sys_partname() {
	local line
	[ -r "$SB_SYS_BLOCK/$1/uevent" ] || return 0
	while IFS= read -r line; do
		case "$line" in PARTNAME=*) printf '%s\n' "${line#PARTNAME=}" ;; esac
	done <"$SB_SYS_BLOCK/$1/uevent"
}

# sb_sys_mounted DIR: true when DIR is a mount point (per $SB_PROC_MOUNTS); prints its fstype.
sb_sys_mounted() {
	local dev mp fs rest
	[ -r "$SB_PROC_MOUNTS" ] || return 1
	while read -r dev mp fs rest; do
		if [ "$mp" = "$1" ]; then
			printf '%s\n' "$fs"
			return 0
		fi
	done <"$SB_PROC_MOUNTS"
	return 1
}

# sb_sys_fs_known TYPE: false only when the kernel's list of filesystems is readable and
# lacks TYPE (read after a mount of TYPE failed: that mount asked for the module).
sb_sys_fs_known() {
	local a b
	[ -r "$SB_PROC_FILESYSTEMS" ] || return 0
	while read -r a b; do
		if [ "$a" = "$1" ] || [ "$b" = "$1" ]; then return 0; fi
	done <"$SB_PROC_FILESYSTEMS"
	return 1
}

# sb_load_modules MOD...: modprobe each; failures are logged, never fatal.
sb_load_modules() {
	local m
	for m in "$@"; do
		if sb_sys_modprobe "$m" 2>/dev/null; then
			sb_debug "module $m loaded"
		else
			sb_warn "modprobe $m failed (built in or missing?)"
		fi
	done
	return 0
}
