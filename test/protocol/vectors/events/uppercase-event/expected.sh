1700000000 install slot=b stack=bbbbbbbbbbbb tries=3 reason=install demo 2
