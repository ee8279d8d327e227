# stackboot boot core: checking a stack's layers before mounting them.

# sb_verify_layers STORE_DIR LIST: LIST holds "<sha256> <bytes> <name>" lines (from
# sb_manifest_layers). Every layer file must exist with the right size, and with
# SB_VERIFY=sha256 the right digest; with SB_STACK_VERITY=1 (verity.sh) a well-formed verity
# line of manifest $SB_VERIFY_MANIFEST whose tree lies inside the file. Sets SB_FAIL_WHY on failure.
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
		# with dm-verity the kernel checks each block as it is read: here only the tree's place
		if [ "${SB_STACK_VERITY:-0}" = 1 ]; then
			sb_verity_check_layer "$SB_VERIFY_MANIFEST" "$h" "$name" "$f" "$size" || return 1
		elif [ "$SB_VERIFY" = sha256 ]; then
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
