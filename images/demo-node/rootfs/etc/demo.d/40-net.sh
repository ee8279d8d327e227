# demo-node: `demo.net=10.0.2.15/24` on the kernel command line gives eth0 that address
# (sourced by the demo init before 50-install.sh: `say` exists). No default route: the
# guest reaches its own subnet only (under QEMU's user-mode network, 10.0.2.2 is the
# host's loopback), so nothing it sends goes beyond the host.
sb_net_addr=
for w in $(cat /proc/cmdline); do
	case "$w" in demo.net=*) sb_net_addr=${w#demo.net=} ;; esac
done
if [ -n "$sb_net_addr" ]; then
	if ip link set lo up && ip addr add "$sb_net_addr" dev eth0 && ip link set eth0 up; then
		say "network: eth0 $sb_net_addr"
	else
		say "network: eth0 $sb_net_addr failed"
	fi
fi
