# demo-node: `demo.install=/dev/vdb` on the kernel command line installs the bundle on
# that disk with the real `stackboot install` (sourced by the demo init: `say` exists).
sb_install_dev=
for w in $(cat /proc/cmdline); do
	case "$w" in demo.install=*) sb_install_dev=${w#demo.install=} ;; esac
done
if [ -n "$sb_install_dev" ]; then
	say "install from $sb_install_dev: start"
	stackboot install "$sb_install_dev" --json </dev/null >/tmp/install.out 2>&1
	sb_install_rc=$?
	while IFS= read -r l; do say "install: $l"; done </tmp/install.out
	say "install from $sb_install_dev: exit $sb_install_rc"
fi
