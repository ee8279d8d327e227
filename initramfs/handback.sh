# stackboot boot core: the shutdown hand-back (systemd's initrd interface).
#
# At shutdown systemd cannot unmount the store that backs the running root, nor detach the
# layers' loop devices: the overlay root still uses them ("Failed unmounting /run/sb/s0",
# "Could not detach loopback"). When /run/initramfs/shutdown is executable, systemd-shutdown
# pivots into /run/initramfs, with the old root at /oldroot, binds /dev, /proc, /sys and
# /run into it, and runs `/shutdown VERB` (reboot, poweroff, halt, kexec). From there the
# old root can be taken down in the right order (shutdown.sh). Only systemd does this, so
# only a root whose init is systemd gets it (the copy of busybox costs its size in RAM).

# sb_handback_wanted ROOT: true when ROOT's init ($SB_INIT) is systemd, directly or
# through one symlink (Debian: /sbin/init -> /lib/systemd/systemd).
sb_handback_wanted() {
	local root="$1" init="${SB_INIT:-/sbin/init}" t
	case "$init" in */systemd) return 0 ;; esac
	t=$(readlink "$root$init" 2>/dev/null) || return 1
	case "$t" in systemd | */systemd) return 0 ;; esac
	return 1
}

# sb_handback_prepare RUN BUSYBOX: fills RUN/initramfs (RUN is the /run that moves into
# the new root) with a static BUSYBOX, the applets shutdown.sh calls, log.sh, the empty
# mount points systemd binds into it, and shutdown.sh as its `shutdown`.
sb_handback_prepare() {
	local dir="$1/initramfs" bb="$2" a
	if ! mkdir -p "$dir/bin" "$dir/lib/stackboot" "$dir/dev" "$dir/proc" "$dir/sys" "$dir/run" "$dir/oldroot" ||
		! cp "$bb" "$dir/bin/busybox" ||
		! cp "$SB_LIB/log.sh" "$dir/lib/stackboot/log.sh" ||
		! cp "$SB_LIB/shutdown.sh" "$dir/shutdown" ||
		! chmod 0755 "$dir/bin/busybox" "$dir/shutdown"; then
		sb_warn "no shutdown hand-back: cannot fill $dir"
		rm -rf "$dir" 2>/dev/null
		return 1
	fi
	for a in sh cat ls losetup umount sync sleep reboot poweroff halt; do
		ln -sf busybox "$dir/bin/$a" || {
			sb_warn "no shutdown hand-back: cannot link $a"
			rm -rf "$dir" 2>/dev/null
			return 1
		}
	done
	sb_handback_utab "$1"
	sb_log "shutdown hand-back ready ($dir/shutdown)"
	return 0
}

# sb_handback_utab RUN: marks every mount under $SB_RUN/sb x-initrd.mount in
# RUN/mount/utab (libmount's user options, which systemd reads with the mount table), so
# systemd leaves them to the hand-back instead of trying to unmount them at shutdown and
# failing on the store ("Failed unmounting run-sb-s0.mount"). A failure only costs that.
sb_handback_utab() {
	local utab="$1/mount/utab" src mp rest
	mkdir -p "$1/mount" 2>/dev/null || return 0
	[ -r "$SB_PROC_MOUNTS" ] || return 0
	while read -r src mp rest; do
		case "$mp" in "$SB_RUN/sb/"*) ;; *) continue ;; esac
		echo "SRC=$src TARGET=$mp ROOT=/ OPTS=x-initrd.mount"
	done <"$SB_PROC_MOUNTS" >>"$utab" 2>/dev/null
	return 0
}
