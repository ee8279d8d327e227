# stackboot boot core: the entry. Sources every library file from $SB_LIB
# (default /lib/stackboot). Defines functions and default variables only.

: "${SB_LIB:=/lib/stackboot}"
for sb__f in log util sys config state events manifest store verity verify wipe reset mount watchdog kexec boot fail handback; do
	if [ -r "$SB_LIB/$sb__f.sh" ]; then
		. "$SB_LIB/$sb__f.sh"
	else
		echo "stackboot: missing $SB_LIB/$sb__f.sh" >&2
	fi
done
unset sb__f
