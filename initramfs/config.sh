# stackboot boot core: configuration.
#
# sb_config_load FILE reads KEY=value lines (never sourced: values are data), then
# applies the kernel command line ($SB_CMDLINE, default the contents of
# $SB_CMDLINE_FILE = /proc/cmdline). Every key becomes SB_<KEY>:
#
#   SB_STORES            disk names or globs in priority order   (nvme0n1 mmcblk0 vda vdb)
#   SB_STORE_LABEL       filesystem label (or GPT name) of a store (sb-store)
#   SB_DATA_LABEL        label of the data partition            (sb-data)
#   SB_TRIES             tries given to a new pending stack     (3; used by installers)
#   SB_UPPER             tmpfs | disk                           (tmpfs)
#   SB_UPPER_SIZE        size= of the tmpfs upper               (50%)
#   SB_VERIFY            size | sha256 | verity                 (verity: dm-verity when the
#                        stack has verity lines and the kernel can, else size; verity.sh)
#   SB_ALLOW_UNSIGNED    1: boot a manifest whose signature fails (development)  (0)
#   SB_PERSIST           paths bound from the data partition    (empty)
#   SB_ON_FAIL           reboot | shell                         (reboot)
#   SB_ON_FAIL_DELAY     seconds before that reboot             (10)
#   SB_INIT              init inside the new root               (/sbin/init)
#   SB_DEVICE_TIMEOUT    max seconds to wait for the disks      (10)
#   SB_DEVICE_SETTLE     once a store is found, seconds to keep waiting for
#                        the missing higher-priority disks      (2)
#   SB_HEALTH_TIMEOUT    seconds per health check (node side)  (60)
#   SB_HEALTH_REBOOT_DELAY seconds before a health reboot       (10)
#   SB_WATCHDOG          seconds the board's watchdog gives a pending stack to be
#                        marked good; 0: the hook leaves it alone (0; watchdog.sh)
#   SB_FIRMWARE          none | jetson | uboot: the firmware-slot backend mark-good
#                        also tells (node config; src/node/firmware.ts)      (none)
#
# Kernel command line (override the file):
#   stackboot.slot=a|b        SB_FORCE_SLOT
#   stackboot.store=ID|DEV    SB_FORCE_STORE (a store-id, or a device like vda2 or /dev/vda2)
#   stackboot.wipe            SB_WIPE=1
#   stackboot.reset           SB_RESET=1 (a factory reset at this boot: reset.sh)
#   stackboot.break           SB_BREAK=1
#   stackboot.debug           SB_DEBUG=1
#   stackboot.kexec=ID:SLOT:STACK  SB_KEXEC_FROM: this is the kexec'ed second stage of
#                             SLOT (its try is already counted; initramfs/kexec.sh)
#   stackboot.tries=N         SB_TRIES
#   stackboot.watchdog=SECS   SB_WATCHDOG
#   stackboot.verify=size|sha256|verity, stackboot.upper=tmpfs|disk, stackboot.onfail=reboot|shell

# sb_config_defaults: set every SB_* config variable that is still unset.
sb_config_defaults() {
	: "${SB_STORES=nvme0n1 mmcblk0 vda vdb}"
	: "${SB_STORE_LABEL=sb-store}"
	: "${SB_DATA_LABEL=sb-data}"
	: "${SB_TRIES=3}"
	: "${SB_UPPER=tmpfs}"
	: "${SB_UPPER_SIZE=50%}"
	: "${SB_VERIFY=verity}"
	: "${SB_ALLOW_UNSIGNED=0}"
	: "${SB_PERSIST=}"
	: "${SB_ON_FAIL=reboot}"
	: "${SB_ON_FAIL_DELAY=10}"
	: "${SB_INIT=/sbin/init}"
	: "${SB_DEVICE_TIMEOUT=10}"
	: "${SB_DEVICE_SETTLE=2}"
	: "${SB_HEALTH_TIMEOUT=60}"
	: "${SB_HEALTH_REBOOT_DELAY=10}"
	: "${SB_WATCHDOG=0}"
	: "${SB_FORCE_SLOT=}"
	: "${SB_FORCE_STORE=}"
	: "${SB_WIPE=0}"
	: "${SB_RESET=0}"
	: "${SB_BREAK=0}"
	: "${SB_DEBUG=0}"
	: "${SB_KEXEC_FROM=}"
	: "${SB_FIRMWARE=none}"
}

# sb_config_set KEY VALUE [ORIGIN]: validate and assign SB_<KEY>. Unknown keys and
# invalid values are logged and ignored (the default stays).
sb_config_set() {
	local key="$1" val="$2" origin="${3:-config}" ok=1 n
	case "$key" in
	TRIES | ON_FAIL_DELAY | DEVICE_TIMEOUT | DEVICE_SETTLE | HEALTH_TIMEOUT | HEALTH_REBOOT_DELAY | WATCHDOG)
		if n=$(sb_uint_norm "$val"); then val=$n; else ok=0; fi ;;
	UPPER) case "$val" in tmpfs | disk) ;; *) ok=0 ;; esac ;;
	VERIFY) case "$val" in size | sha256 | verity) ;; full) val=sha256 ;; *) ok=0 ;; esac ;;
	ALLOW_UNSIGNED) case "$val" in 0 | 1) ;; *) ok=0 ;; esac ;;
	ON_FAIL) case "$val" in reboot | shell) ;; *) ok=0 ;; esac ;;
	UPPER_SIZE) case "$val" in '' | *[!0-9kmgKMG%]*) ok=0 ;; esac ;;
	INIT) case "$val" in /*) case "$val" in *[!A-Za-z0-9._/+-]*) ok=0 ;; esac ;; *) ok=0 ;; esac ;;
	STORE_LABEL | DATA_LABEL) case "$val" in '' | *[!A-Za-z0-9._-]*) ok=0 ;; esac ;;
	STORES) case "$val" in *[!A-Za-z0-9._*?' '-]*) ok=0 ;; esac ;;
	PERSIST) case "$val" in *[!A-Za-z0-9._/' '+@-]*) ok=0 ;; esac ;;
	FIRMWARE) case "$val" in none | jetson | uboot) ;; *) ok=0 ;; esac ;;
	*)
		sb_debug "$origin: unknown key $key ignored"
		return 0
		;;
	esac
	if [ "$ok" = 0 ]; then
		sb_warn "$origin: invalid value for $key ignored: $(sb_oneline "$val")"
		return 1
	fi
	# The value is assigned, never evaluated: eval only sees the literal \$val.
	eval "SB_$key=\$val"
	sb_debug "$origin: $key=$val"
	return 0
}

# sb_config_parse FILE: apply KEY=value lines of FILE.
sb_config_parse() {
	local file="$1" line key val n=0
	[ -r "$file" ] || {
		sb_warn "config $file not readable, using defaults"
		return 1
	}
	while IFS= read -r line || [ -n "$line" ]; do
		n=$((n + 1))
		line=$(sb_trim "$line")
		case "$line" in '' | '#'*) continue ;; *=*) ;; *)
			sb_warn "$file:$n: not KEY=value, ignored"
			continue
			;;
		esac
		key=$(sb_trim "${line%%=*}")
		val=${line#*=}
		# a comment starts at a '#' that follows a blank
		case "$val" in *' #'*) val=${val%%' #'*} ;; esac
		case "$val" in *'	#'*) val=${val%%'	#'*} ;; esac
		val=$(sb_trim "$val")
		case "$val" in
		\"*\") val=${val#\"} val=${val%\"} ;;
		\'*\') val=${val#\'} val=${val%\'} ;;
		esac
		case "$key" in '' | *[!A-Z0-9_]*)
			sb_warn "$file:$n: bad key ignored"
			continue
			;;
		esac
		sb_config_set "$key" "$val" "$file:$n"
	done <"$file"
	return 0
}

# sb_cmdline_apply: apply stackboot.* words of $SB_CMDLINE.
sb_cmdline_apply() {
	local w
	if [ -z "${SB_CMDLINE+x}" ]; then
		SB_CMDLINE=
		[ -r "$SB_CMDLINE_FILE" ] && SB_CMDLINE=$(cat "$SB_CMDLINE_FILE" 2>/dev/null)
	fi
	sb_noglob
	for w in $SB_CMDLINE; do
		case "$w" in
		stackboot.debug | stackboot.debug=1 | stackboot.debug=y*) SB_DEBUG=1 ;;
		stackboot.break | stackboot.break=1 | stackboot.break=y*) SB_BREAK=1 ;;
		stackboot.wipe | stackboot.wipe=1 | stackboot.wipe=y*) SB_WIPE=1 ;;
		stackboot.reset | stackboot.reset=1 | stackboot.reset=y*) SB_RESET=1 ;;
		stackboot.slot=*)
			if sb_is_slot "${w#*=}"; then SB_FORCE_SLOT=${w#*=}; else sb_warn "cmdline: bad $w ignored"; fi ;;
		stackboot.store=*)
			case "${w#*=}" in '' | *[!A-Za-z0-9/._-]*) sb_warn "cmdline: bad stackboot.store ignored" ;; *) SB_FORCE_STORE=${w#*=} ;; esac ;;
		stackboot.tries=*) sb_config_set TRIES "${w#*=}" cmdline ;;
		stackboot.watchdog=*) sb_config_set WATCHDOG "${w#*=}" cmdline ;;
		stackboot.kexec=*)
			SB_KEXEC_FROM=${w#*=}
			sb_kexec_spec_parse || { sb_warn "cmdline: bad $w ignored"; SB_KEXEC_FROM=; } ;;
		stackboot.verify=*) sb_config_set VERIFY "${w#*=}" cmdline ;;
		stackboot.upper=*) sb_config_set UPPER "${w#*=}" cmdline ;;
		stackboot.onfail=*) sb_config_set ON_FAIL "${w#*=}" cmdline ;;
		esac
	done
	sb_restore_glob
	# the second stage looks on the store the first stage chose first
	[ -n "$SB_KEXEC_FROM" ] && [ -z "$SB_FORCE_STORE" ] && SB_FORCE_STORE=${SB_KEXEC_FROM%%:*}
	return 0
}

# sb_config_load FILE: defaults, then FILE, then the kernel command line.
sb_config_load() {
	sb_config_defaults
	[ -n "$1" ] && sb_config_parse "$1"
	sb_cmdline_apply
	sb_debug "config: stores='$SB_STORES' label=$SB_STORE_LABEL upper=$SB_UPPER verify=$SB_VERIFY on_fail=$SB_ON_FAIL init=$SB_INIT"
	return 0
}

# sb_break_requested: true when stackboot.break is on the kernel command line.
sb_break_requested() {
	local cl
	[ "$SB_BREAK" = 1 ] && return 0
	if [ -n "${SB_CMDLINE+x}" ]; then cl=$SB_CMDLINE; else cl=$(cat "$SB_CMDLINE_FILE" 2>/dev/null); fi
	case " $cl " in
	*' stackboot.break '* | *' stackboot.break='[1y]*) return 0 ;;
	esac
	return 1
}
