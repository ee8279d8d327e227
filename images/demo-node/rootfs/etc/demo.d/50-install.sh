# demo-node: `demo.install=/dev/vdb` on the kernel command line installs the bundle on
# that disk with the real `stackboot install` (sourced by the demo init: `say` exists);
# any source install takes works (`demo.install=oci://…`), and each
# `demo.installarg=ARG` adds ARG to its command line (e.g. `--insecure`).
# The --json event lines are printed as they come (the power-cut tests time their kills
# from them).
sb_install_dev=
sb_install_args=
for w in $(cat /proc/cmdline); do
	case "$w" in
	demo.install=*) sb_install_dev=${w#demo.install=} ;;
	demo.installarg=*) sb_install_args="$sb_install_args ${w#demo.installarg=}" ;;
	esac
done
if [ -n "$sb_install_dev" ]; then
	say "install from $sb_install_dev: start"
	{
		# shellcheck disable=SC2086 # the words of the command line, split as given
		stackboot install "$sb_install_dev" --json $sb_install_args </dev/null 2>&1
		echo "rc=$?"
	} | while IFS= read -r l; do
		case "$l" in
		rc=*) say "install from $sb_install_dev: exit ${l#rc=}" ;;
		*) say "install: $l" ;;
		esac
	done
fi
