9 fail slot=a stack=aaaaaaaaaaaa reason=layer base
