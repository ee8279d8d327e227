#!/bin/sh
# stackboot: the shutdown hand-back, run by systemd-shutdown as /run/initramfs/shutdown
# VERB once it has pivoted into /run/initramfs (the old root at /oldroot; see handback.sh).
# Not part of the sourced core: sb_handback_prepare copies it there at boot.
#
# The old root cannot be unmounted path by path: the overlay at /oldroot uses the layer
# mounts and the upper under /oldroot/run/sb, and those are mounted on the overlay. So the
# whole tree is detached at once (umount -l); the kernel frees each mount as its last user
# goes: the overlay, then the layers and their loop devices (autoclear), then the store
# once no loop device holds a file on it. A layer opened through dm-verity: its device
# was marked for removal at its last close (handback.sh), which the kernel does from a
# work queue, and its loop device is released here once it is gone. Loop devices still
# bound are released here, waiting up to 5 s while a loop device or an ext4 is held.
# Never set -e: every step is tried, and the machine always goes down.
export PATH=/bin
SB_LIB=/lib/stackboot
SB_LOG_PREFIX="stackboot: shutdown"
[ -w /dev/console ] && exec </dev/console >/dev/console 2>&1
if ! . "$SB_LIB/log.sh" 2>/dev/null; then
	sb_log() { echo "stackboot: shutdown: $*"; }
	sb_warn() { echo "stackboot: shutdown: warning: $*"; }
fi
verb="${1:-reboot}"

if umount -l /oldroot 2>/dev/null; then
	sb_log "old root detached"
else
	sb_warn "cannot detach /oldroot"
fi
sync

# loop devices still bound to a file, and ext4 filesystems the kernel still holds (the
# store, a disk upper, the data partition): both go some time after the lazy detach (a
# loop device still open when it is detached is freed at its last close, and the verity
# devices over them from a work queue), so up to five rounds a second apart while any is left
n=0
round=0
gone=
while :; do
	busy=
	for b in /sys/block/loop*; do
		[ -r "$b/loop/backing_file" ] || continue
		# detached, still open: it goes at its last close
		case "$gone " in *" ${b##*/} "*) continue ;; esac
		if losetup -d "/dev/${b##*/}" 2>/dev/null; then
			n=$((n + 1))
			gone="$gone ${b##*/}"
		else
			busy="$busy ${b##*/}"
		fi
	done
	held=
	for f in /sys/fs/ext4/*; do
		[ -d "$f" ] || continue
		case "${f##*/}" in features) continue ;; esac
		held="$held ${f##*/}"
	done
	[ -n "$busy$held" ] && [ "$round" -lt 5 ] || break
	round=$((round + 1))
	sync
	sleep 1
done
sync
[ "$round" -gt 0 ] && sb_log "waited $round s for the kernel to free the loop devices and the store"
if [ -z "$busy" ] && [ -z "$held" ]; then
	sb_log "clean: every mount released, $n loop device(s) detached here; $verb"
else
	sb_warn "still held:${busy:+ loop$busy}${held:+ ext4$held}; $verb anyway"
fi

case "$verb" in
poweroff | halt) "$verb" -f ;;
*) reboot -f ;;
esac
# only reached when that failed: keep trying, never return to systemd-shutdown
while :; do
	sleep 5
	reboot -f
done
