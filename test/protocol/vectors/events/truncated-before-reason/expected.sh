1700000000 install slot=b stack=bbbbbbbbbbbb tries=3 reason=install demo 2
1700000061 boot slot=b stack=bbbbbbbbbbbb tries=2 reason=pending on /dev/vda2
