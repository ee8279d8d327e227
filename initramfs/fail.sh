# stackboot boot core: when every candidate failed.

# sb_all_failed: append `allfailed` to every store still mounted, then ON_FAIL:
# reboot after SB_ON_FAIL_DELAY seconds (does not return), or an emergency shell
# (returns 1 when the shell exits). Logs every step.
sb_all_failed() {
	local i=0 mnt
	sb_err "every candidate failed${SB_FALLBACK:+; last: $SB_FALLBACK}"
	while [ "$i" -lt "${SB_STORE_COUNT:-0}" ]; do
		mnt=$(sb_store_get "$i" MNT)
		if sb_event "$mnt" allfailed - "" "" "every candidate failed${SB_FALLBACK:+; last: $SB_FALLBACK}"; then
			sb_store_ro "$mnt"
		else
			sb_warn "could not record allfailed on $(sb_store_get "$i" DEV)"
		fi
		i=$((i + 1))
	done
	sync
	if [ "${SB_ON_FAIL:-reboot}" = shell ]; then
		sb_err "ON_FAIL=shell: starting an emergency shell (exit it to continue)"
		sb_sys_shell
		return 1
	fi
	sb_err "ON_FAIL=reboot: rebooting in ${SB_ON_FAIL_DELAY:-10}s"
	sb_sys_sleep "${SB_ON_FAIL_DELAY:-10}"
	sb_err "rebooting now"
	sb_sys_reboot
	sb_err "reboot failed; starting an emergency shell"
	sb_sys_shell
	return 1
}
