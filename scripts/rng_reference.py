#!/usr/bin/env python3
"""Independent reference of collab_data::SeededRng's stream: SplitMix64 key expansion, then the
ChaCha block function (RFC 8439) with 8 rounds, 64-bit block counter from 0, zero nonce.
Usage: python3 scripts/rng_reference.py SEED  -> the first three next_u64 values and the first next_u32."""
M=(1<<64)-1
def splitmix(s):
    out=[]
    for _ in range(4):
        s=(s+0x9E3779B97F4A7C15)&M; z=s
        z=((z^(z>>30))*0xBF58476D1CE4E5B9)&M
        z=((z^(z>>27))*0x94D049BB133111EB)&M
        out.append(z^(z>>31))
    return out
def rotl(x,n): return ((x<<n)|(x>>(32-n)))&0xffffffff
def qr(s,a,b,c,d):
    s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],16)
    s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],12)
    s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],8)
    s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],7)
def block(key_words, counter, rounds=8):
    st=[0x61707865,0x3320646e,0x79622d32,0x6b206574]+key_words+[counter&0xffffffff,(counter>>32)&0xffffffff,0,0]
    w=st[:]
    for _ in range(rounds//2):
        qr(w,0,4,8,12);qr(w,1,5,9,13);qr(w,2,6,10,14);qr(w,3,7,11,15)
        qr(w,0,5,10,15);qr(w,1,6,11,12);qr(w,2,7,8,13);qr(w,3,4,9,14)
    return [(a+b)&0xffffffff for a,b in zip(w,st)]
import sys
seed=int(sys.argv[1])
key=b''.join(x.to_bytes(8,'little') for x in splitmix(seed))
kw=[int.from_bytes(key[i:i+4],'little') for i in range(0,32,4)]
words=block(kw,0)
u64=[words[i]|(words[i+1]<<32) for i in range(0,6,2)]
print(u64, words[0])
