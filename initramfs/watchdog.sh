# stackboot boot core: the board's watchdog over a pending stack's try (docs/boot.md,
# "Watchdog"). WATCHDOG=SECS (0, the default: off). When the hook hands the node to a
# pending stack (switch_root, or the jump into the stack's own kernel), it leaves the
# watchdog running with a SECS timeout and nobody feeding it: a stack that hangs before
# it is marked good (or before its userspace feeds the watchdog itself, as systemd's
# RuntimeWatchdogSec does) is reset by the board, and that try is used up. mark-good
# stops it (stackboot-node, `stackboot mark-good`). A good stack is booted without it.

: "${SB_SYS_WATCHDOG=/sys/class/watchdog}"

# sb_watchdog_dev: the device the hook arms ($SB_DEV/watchdog, the first one).
sb_watchdog_dev() { printf '%s/watchdog\n' "${SB_DEV:-/dev}"; }

# sb_watchdog_wanted SLOT: true when the hook arms the watchdog for SLOT (WATCHDOG > 0 and
# SLOT pending).
sb_watchdog_wanted() {
	sb_is_uint "${SB_WATCHDOG:-0}" && [ "${SB_WATCHDOG:-0}" -gt 0 ] && [ "$(sb_slot_status "$1")" = pending ]
}

# sb_watchdog_arm SLOT [kexec]: arm the watchdog when wanted for SLOT. Sets
# SB_WATCHDOG_ARMED to DEV:SECS (empty when not armed; the booted record keeps it for
# mark-good). 1 when wanted and not armed (logged; the boot goes on).
sb_watchdog_arm() {
	local slot="$1" how="${2-}" dev sor secs
	SB_WATCHDOG_ARMED=
	sb_watchdog_wanted "$slot" || return 0
	dev=$(sb_watchdog_dev)
	if ! sb_sys_watchdog_present "$dev"; then
		if [ -n "${SB_KEXEC_FROM-}" ]; then
			# the second stage: the first stage armed it before the jump
			sb_warn "no $dev in this initrd (the stack kernel's modules lack the board's watchdog driver): the watchdog the first stage armed runs on, and nothing here can stop it; put the driver in the stack kernel's modules (recipe kernel.modules)"
		else
			sb_warn "WATCHDOG=$SB_WATCHDOG but no $dev (the board's watchdog driver is not in this initrd): a hang of slot $slot is not reset"
		fi
		return 1
	fi
	if [ "$how" = kexec ]; then
		# the kernel stops a watchdog on reboot, kexec included, when its driver asks for
		# it (i6300esb, softdog and many more) unless watchdog.stop_on_reboot=0
		sor=$(sb_sys_watchdog_stop_on_reboot)
		[ "$sor" = 0 ] || sb_warn "the watchdog may be stopped by the jump into the new kernel (watchdog.stop_on_reboot=${sor:-?}): put watchdog.stop_on_reboot=0 on the kernel command line"
	fi
	if ! secs=$(sb_sys_watchdog_arm "$dev" "$SB_WATCHDOG"); then
		sb_warn "cannot arm the watchdog $dev: a hang of slot $slot is not reset"
		return 1
	fi
	[ "$secs" = "$SB_WATCHDOG" ] || sb_warn "the watchdog $dev took a timeout of ${secs:-?} s, not WATCHDOG=$SB_WATCHDOG (its driver's limits)"
	SB_WATCHDOG_ARMED="$dev:${secs:-$SB_WATCHDOG}"
	sb_log "watchdog $dev armed: slot $slot has ${secs:-$SB_WATCHDOG} s to be marked good"
	return 0
}

# sb_watchdog_disarm ARMED: after mark-good, stop the watchdog the hook armed (ARMED is
# the booted record's DEV:SECS; empty: nothing to do). Its magic close ('V') stops it;
# a device another process holds open (systemd's RuntimeWatchdogSec) is fed by it and
# stays its own. 0 when stopped or not ours to stop, 1 when it could not be stopped.
sb_watchdog_disarm() {
	local dev="${1%:*}" out
	[ -n "$1" ] || return 0
	if ! sb_sys_watchdog_present "$dev"; then
		sb_warn "the watchdog $dev armed at boot is gone; nothing to stop"
		return 0
	fi
	if out=$(sb_sys_watchdog_stop "$dev" 2>&1); then
		if [ "$(sb_sys_watchdog_state "$dev")" = active ]; then
			sb_warn "the watchdog $dev did not stop (a kernel or driver with nowayout): feed it, or the board resets"
			return 1
		fi
		sb_log "watchdog $dev stopped (the stack is good)"
		return 0
	fi
	case "$out" in
	*[Bb]usy*)
		sb_log "watchdog $dev is held by another process (systemd's RuntimeWatchdogSec?), which feeds it"
		return 0
		;;
	esac
	sb_warn "cannot stop the watchdog $dev: $(sb_oneline "$out")"
	return 1
}

# sb_watchdog_reset_check: SB_WATCHDOG_NOTE=" (the last boot was reset by the watchdog)"
# when the driver says the board's last reset came from it (bootstatus has
# WDIOF_CARDRESET, 0x20; the driver clears it, so only the boot after such a reset sees
# it), else empty; for the reasons of the pending stack's events. Once per boot.
sb_watchdog_reset_check() {
	local s
	SB_WATCHDOG_NOTE=
	s=$(sb_sys_watchdog_bootstatus "$(sb_watchdog_dev)")
	sb_is_uint "$s" || return 0
	[ $((s & 32)) -ne 0 ] || return 0
	SB_WATCHDOG_NOTE=" (the last boot was reset by the watchdog)"
	sb_warn "the board's last reset came from its watchdog"
}

# sb_sys_watchdog_arm DEV SECS: start DEV with a SECS timeout and leave it running with
# nobody to feed it; prints the timeout the driver took. No shell can set a watchdog's timeout (an ioctl), so busybox's
# watchdog applet opens DEV and sets it; it is SIGKILLed once sysfs shows the watchdog
# active with that timeout (at most ~2 s), so it never writes the magic 'V' that would
# stop the watchdog on close. The kernel then logs "watchdog did not stop!".
sb_sys_watchdog_arm() {
	local dev="$1" secs="$2" bb pid sys n=0
	bb=$(sb__busybox) || return 1
	"$bb" watchdog -F -T "$secs" -t "$(((secs + 1) / 2))" "$dev" </dev/null >/dev/null 2>&1 &
	pid=$!
	sys=$(sb__watchdog_sys "$dev")
	while [ "$n" -lt 20 ]; do
		if [ "$(cat "$sys/state" 2>/dev/null)" = active ] && [ "$(cat "$sys/timeout" 2>/dev/null)" = "$secs" ]; then
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1 2>/dev/null || sleep 1
		n=$((n + 1))
	done
	kill -0 "$pid" 2>/dev/null || {
		sb_warn "busybox watchdog $dev exited before it was armed"
		return 1
	}
	# no sysfs state (a kernel without WATCHDOG_SYSFS): the 2 s above were its time
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	if [ ! -r "$sys/state" ]; then
		echo "$secs"
		return 0
	fi
	[ "$(cat "$sys/state" 2>/dev/null)" = active ] || return 1
	cat "$sys/timeout" 2>/dev/null || echo "$secs"
}

# sb_sys_watchdog_stop DEV: the magic close: open DEV, write 'V', close (the open's
# error on stderr when it fails).
sb_sys_watchdog_stop() { (printf V >"$1"); }

# sb_sys_watchdog_present DEV: true when DEV is a character device.
sb_sys_watchdog_present() { [ -c "$1" ]; }

# sb_sys_watchdog_state DEV: active or inactive (sysfs); empty when unknown.
sb_sys_watchdog_state() { cat "$(sb__watchdog_sys "$1")/state" 2>/dev/null; }

# sb__watchdog_sys DEV: its sysfs folder (/dev/watchdog is watchdog0's old name).
sb__watchdog_sys() {
	case "${1##*/}" in
	watchdog) printf '%s/watchdog0\n' "$SB_SYS_WATCHDOG" ;;
	*) printf '%s/%s\n' "$SB_SYS_WATCHDOG" "${1##*/}" ;;
	esac
}

# sb_sys_watchdog_bootstatus DEV: the driver's bootstatus flags (sysfs, decimal); empty when unknown.
sb_sys_watchdog_bootstatus() { cat "$(sb__watchdog_sys "$1")/bootstatus" 2>/dev/null; }

# sb_sys_watchdog_stop_on_reboot: the watchdog core's stop_on_reboot (-1: as the driver
# asks, 0: keep watching, 1: stop); empty when unknown.
sb_sys_watchdog_stop_on_reboot() { cat "$SB_SYS_MODULE/watchdog/parameters/stop_on_reboot" 2>/dev/null; }

# sb__busybox: the busybox for applets the initrd's tools may lack (dracut's and
# initramfs-tools' flavours ship one at $SB_LIB/busybox).
sb__busybox() {
	if [ -x "${SB_LIB:-/lib/stackboot}/busybox" ]; then
		printf '%s\n' "${SB_LIB:-/lib/stackboot}/busybox"
	else
		command -v busybox
	fi
}
