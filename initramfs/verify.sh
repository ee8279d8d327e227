# stackboot boot core: checking a stack's layers before mounting them.

# sb_verify_layers STORE_DIR LIST: LIST holds "<sha256> <bytes> <name>" lines (from
# sb_manifest_layers). Every layer file must exist with the right size, and with
# SB_VERIFY=sha256 the right digest. Sets SB_FAIL_WHY on failure.
sb_verify_layers() {
	local store="$1" list="$2" h n name f size got
	SB_FAIL_WHY=
	while read -r h n name; do
		f="$store/layers/$h.sqfs"
		if [ ! -f "$f" ]; then
			SB_FAIL_WHY="layer $name ($(sb_short "$h")) missing"
			return 1
		fi
		size=$(sb_file_size "$f")
		if [ "$size" != "$n" ]; then
			SB_FAIL_WHY="layer $name ($(sb_short "$h")) has $size bytes, manifest says $n"
			return 1
		fi
		if [ "$SB_VERIFY" = sha256 ]; then
			sb_debug "sha256 of layer $name"
			got=$(sb_sha256 "$f")
			if [ "$got" != "$h" ]; then
				SB_FAIL_WHY="layer $name ($(sb_short "$h")) sha256 mismatch"
				return 1
			fi
		fi
		sb_debug "layer $name ok ($n bytes)"
	done <"$list"
	return 0
}
