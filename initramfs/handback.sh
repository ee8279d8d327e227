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

# sb_handback_prepare RUN BUSYBOX [LIBS]: fills RUN/initramfs (RUN is the /run that moves
# into the new root) with BUSYBOX, the applets shutdown.sh calls, log.sh, the empty mount
# points systemd binds into it, and shutdown.sh as its `shutdown`. A dynamic BUSYBOX
# (initramfs-tools and dracut take the distribution's) needs LIBS: a file that lists the
# shared libraries and the loader it runs with, one absolute path a line, copied to the
# same paths (the old root, where they came from, is gone when shutdown.sh runs).
sb_handback_prepare() {
	local dir="$1/initramfs" bb="$2" libs="${3:-}" a lib
	sb_handback_exec "$1" || return 1
	if ! mkdir -p "$dir/bin" "$dir/lib/stackboot" "$dir/dev" "$dir/proc" "$dir/sys" "$dir/run" "$dir/oldroot" ||
		! cp "$bb" "$dir/bin/busybox" ||
		! cp "$SB_LIB/log.sh" "$dir/lib/stackboot/log.sh" ||
		! cp "$SB_LIB/shutdown.sh" "$dir/shutdown" ||
		! chmod 0755 "$dir/bin/busybox" "$dir/shutdown"; then
		sb_handback_drop "$dir" "cannot fill $dir"
		return 1
	fi
	if [ -n "$libs" ]; then
		if [ ! -r "$libs" ]; then
			sb_handback_drop "$dir" "the list of busybox's libraries $libs is missing"
			return 1
		fi
		while read -r lib; do
			case "$lib" in
			/*) ;;
			*) continue ;;
			esac
			if ! mkdir -p "$dir${lib%/*}" || ! cp -L "$lib" "$dir$lib"; then
				sb_handback_drop "$dir" "cannot copy $lib"
				return 1
			fi
		done <"$libs"
	fi
	for a in sh cat ls losetup umount sync sleep reboot poweroff halt; do
		ln -sf busybox "$dir/bin/$a" || {
			sb_handback_drop "$dir" "cannot link $a"
			return 1
		}
	done
	sb_handback_utab "$1"
	sb_verity_release_on_close
	sb_log "shutdown hand-back ready ($dir/shutdown)"
	return 0
}

# sb_handback_hook NEWROOT INIT [RUN] [LIBS]: the hand-back of the initramfs-tools and
# dracut flavours, before they hand over: when the hook shipped its own busybox
# ($SB_LIB/busybox, its libraries listed in LIBS, default /etc/stackboot/handback.libs)
# and NEWROOT's INIT is systemd, RUN/initramfs (default /run: it moves into the new root)
# is filled. Nothing to do is not a failure.
sb_handback_hook() {
	[ -x "$SB_LIB/busybox" ] || return 0
	SB_INIT="$2" sb_handback_wanted "$1" || return 0
	sb_handback_prepare "${3:-/run}" "$SB_LIB/busybox" "${4:-/etc/stackboot/handback.libs}"
}

# sb_handback_exec RUN: makes sure systemd can run RUN/initramfs/shutdown. initramfs-tools
# mounts /run noexec and moves that mount into the new root; there access(X_OK) fails
# and systemd-shutdown skips the hand-back. Then RUN/initramfs gets a small tmpfs of its
# own (exec allowed), keeping what initramfs-tools left in the folder; systemd-shutdown
# remounts it read-only instead of unmounting it (/run/initramfs is never unmounted).
sb_handback_exec() {
	local run="$1" tmp="$1/.sb-handback" noexec="" src mp fs opts rest
	[ -r "$SB_PROC_MOUNTS" ] || return 0
	while read -r src mp fs opts rest; do
		[ "$mp" = "$run" ] || continue
		case ",$opts," in
		*,noexec,*) noexec=1 ;;
		*) noexec="" ;;
		esac
	done <"$SB_PROC_MOUNTS"
	[ -n "$noexec" ] || return 0
	if ! mkdir -p "$tmp" "$run/initramfs" || ! mount -t tmpfs -o mode=0755,nosuid,nodev,size=32m stackboot-handback "$tmp"; then
		sb_warn "no shutdown hand-back: $run is noexec and no tmpfs could be mounted for it"
		rmdir "$tmp" 2>/dev/null
		return 1
	fi
	if ! cp -a "$run/initramfs/." "$tmp/" || ! mount -o move "$tmp" "$run/initramfs"; then
		sb_warn "no shutdown hand-back: cannot put a tmpfs on $run/initramfs"
		umount "$tmp" 2>/dev/null
		rmdir "$tmp" 2>/dev/null
		return 1
	fi
	rmdir "$tmp" 2>/dev/null
	sb_log "$run is noexec: $run/initramfs is a tmpfs of its own"
	return 0
}

# sb_handback_libs BINARY: the list sb_handback_prepare's LIBS holds, from ldd (run where
# the initramfs is made: initramfs-tools' hook). Nothing for a static binary.
sb_handback_libs() {
	ldd "$1" 2>/dev/null | sed -n -e 's/^.*=> \(\/[^ ]*\) .*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) .*$/\1/p'
}

# sb_handback_drop DIR WHY: no hand-back after all; removes what was copied (RAM).
sb_handback_drop() {
	sb_warn "no shutdown hand-back: $2"
	rm -rf "$1" 2>/dev/null
}

# sb_handback_utab RUN: marks every mount under $SB_RUN/sb (and RUN/initramfs, when it is
# a mount of its own) x-initrd.mount in
# RUN/mount/utab (libmount's user options, which systemd reads with the mount table), so
# systemd leaves them to the hand-back instead of trying to unmount them at shutdown and
# failing on the store ("Failed unmounting run-sb-s0.mount"). A failure only costs that.
sb_handback_utab() {
	local utab="$1/mount/utab" src mp rest
	mkdir -p "$1/mount" 2>/dev/null || return 0
	[ -r "$SB_PROC_MOUNTS" ] || return 0
	while read -r src mp rest; do
		case "$mp" in "$SB_RUN/sb/"* | "$1/initramfs") ;; *) continue ;; esac
		echo "SRC=$src TARGET=$mp ROOT=/ OPTS=x-initrd.mount"
	done <"$SB_PROC_MOUNTS" >>"$utab" 2>/dev/null
	return 0
}
