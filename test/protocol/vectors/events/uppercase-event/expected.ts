1700000000 install slot=b stack=bbbbbbbbbbbb tries=3 reason=install demo 2
1700000060 Boot_2 slot=b stack=bbbbbbbbbbbb reason=x
