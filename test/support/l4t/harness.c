/*
 * l4t-extlinux DIR FILES_PART LAUNCHER_PART CHAIN NAME...
 *
 * Runs NVIDIA's ProcessExtLinuxConfig (L4TLauncher-extlinux.c, verbatim) on a disk of
 * GPT partitions named NAME... (1-based), the launcher loaded from partition
 * LAUNCHER_PART, boot chain CHAIN (0 = A, 1 = B), where partition FILES_PART holds the
 * files of the host folder DIR. Prints what the launcher would boot as one JSON object:
 * the partition it chose, the timeout, the title, the default entry and every entry.
 */
#include "edk2-shim.h"
/* NVIDIA's functions are STATIC: one translation unit */
#include "L4TLauncher-extlinux.c"

/* ---- the disk model ---------------------------------------------------------------- */
#define MAX_PARTS 16
static EFI_PARTITION_INFO_PROTOCOL parts[MAX_PARTS];
static int nparts;
static int disk_handle;                 /* the parent of every partition */
static int part_handles[MAX_PARTS];     /* part_handles[i] stands for partition i + 1 */
static const char *files_dir;
static int files_part;

static int part_of(EFI_HANDLE h) {
  for (int i = 0; i < nparts; i++) if (h == &part_handles[i]) return i + 1;
  return 0;
}

EFI_GUID gEfiPartitionInfoProtocolGuid;
static EFI_STATUS handle_protocol(EFI_HANDLE h, EFI_GUID *g, VOID **iface) {
  int n = part_of(h);
  if (g != &gEfiPartitionInfoProtocolGuid || n == 0) return EFI_NOT_FOUND;
  *iface = &parts[n - 1];
  return EFI_SUCCESS;
}
static EFI_BOOT_SERVICES bs = { handle_protocol };
EFI_BOOT_SERVICES *gBS = &bs;

EFI_STATUS PARSE_HANDLE_DATABASE_PARENTS(EFI_HANDLE h, UINTN *count, EFI_HANDLE **parents) {
  if (part_of(h) == 0) return EFI_NOT_FOUND;
  *parents = malloc(sizeof(EFI_HANDLE));
  (*parents)[0] = &disk_handle;
  *count = 1;
  return EFI_SUCCESS;
}
EFI_STATUS ParseHandleDatabaseForChildControllers(EFI_HANDLE h, UINTN *count, EFI_HANDLE **children) {
  if (h != &disk_handle) return EFI_NOT_FOUND;
  *children = malloc(sizeof(EFI_HANDLE) * (nparts ? nparts : 1));
  for (int i = 0; i < nparts; i++) (*children)[i] = &part_handles[i];
  *count = nparts;
  return EFI_SUCCESS;
}
UINT32 LocatePartitionIndex(EFI_HANDLE h) { return part_of(h); }

/* with Secure Boot off, the launcher opens the file and reads it unchecked */
EFI_STATUS OpenAndReadFileToBuffer(CONST EFI_HANDLE PartitionHandle, CONST CHAR16 *CONST FileName, EFI_FILE_HANDLE *CONST FileHandle, VOID **CONST FileData, UINT64 *CONST FileDataSize) {
  (void)FileData; (void)FileDataSize;
  if (part_of(PartitionHandle) != files_part) return EFI_NOT_FOUND;
  char path[4096];
  size_t n = (size_t)snprintf(path, sizeof path, "%s/", files_dir);
  for (const CHAR16 *c = FileName; *c && n + 1 < sizeof path; c++) path[n++] = *c == '\\' ? '/' : (char)*c;
  path[n] = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return EFI_NOT_FOUND;
  *FileHandle = f;
  return EFI_SUCCESS;
}

/* ---- ShellPkg FileHandleLib: lines as CHAR16, '\r' dropped, ASCII unless a UCS-2 BOM --- */
BOOLEAN FileHandleEof(EFI_FILE_HANDLE h) {
  int c = fgetc(h);
  if (c == EOF) return TRUE;
  ungetc(c, h);
  return FALSE;
}
CHAR16 *FileHandleReturnLine(EFI_FILE_HANDLE h, BOOLEAN *Ascii) {
  size_t cap = 64, n = 0;
  CHAR16 *line = malloc(cap * sizeof(CHAR16));
  int unicode = 0;
  static FILE *seen;
  static int seen_unicode;
  if (seen != h) {
    seen = h;
    int a = fgetc(h), b = fgetc(h);
    seen_unicode = a == 0xff && b == 0xfe;
    if (!seen_unicode) fseek(h, 0, SEEK_SET);
  }
  unicode = seen_unicode;
  for (;;) {
    int c = fgetc(h);
    if (c == EOF) break;
    if (unicode) { int d = fgetc(h); if (d == EOF) break; c |= d << 8; }
    if (c == '\n') break;
    if (c == '\r') continue;
    if (n + 2 > cap) line = realloc(line, (cap *= 2) * sizeof(CHAR16));
    line[n++] = (CHAR16)c;
  }
  line[n] = 0;
  *Ascii = !unicode;
  return line;
}
EFI_STATUS FileHandleClose(EFI_FILE_HANDLE h) { fclose(h); return EFI_SUCCESS; }

static void print16(FILE *o, CONST CHAR16 *s) { for (; *s; s++) fputc(*s < 0x80 ? (int)*s : '?', o); }
UINTN ErrorPrint(CONST CHAR16 *fmt, ...) { fputs("launcher: ", stderr); print16(stderr, fmt); return 0; }
UINTN Print(CONST CHAR16 *fmt, ...) { fputs("launcher: ", stderr); print16(stderr, fmt); return 0; }

/* ---- BaseLib ------------------------------------------------------------------------ */
UINTN StrLen(CONST CHAR16 *s) { UINTN n = 0; while (s[n]) n++; return n; }
UINTN StrSize(CONST CHAR16 *s) { return (StrLen(s) + 1) * sizeof(CHAR16); }
UINTN StrnLenS(CONST CHAR16 *s, UINTN max) { UINTN n = 0; if (!s) return 0; while (n < max && s[n]) n++; return n; }
int StrCmp(CONST CHAR16 *a, CONST CHAR16 *b) { while (*a && *a == *b) { a++; b++; } return (int)*a - (int)*b; }
int StrnCmp(CONST CHAR16 *a, CONST CHAR16 *b, UINTN n) {
  if (n == 0) return 0;
  while (*a && *a == *b && n > 1) { a++; b++; n--; }
  return (int)*a - (int)*b;
}
CHAR16 *StrStr(CONST CHAR16 *s, CONST CHAR16 *sub) {
  UINTN k = StrLen(sub);
  if (k == 0) return (CHAR16 *)s;
  for (; *s; s++) if (StrnCmp(s, sub, k) == 0) return (CHAR16 *)s;
  return NULL;
}
UINTN StrDecimalToUintn(CONST CHAR16 *s) {
  UINTN v = 0;
  while (*s == ' ' || *s == '\t') s++;
  while (*s == '0') s++;
  for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (UINTN)(*s - '0');
  return v;
}
/* MdePkg FilePaths.c: '/' to '\', "\\" collapsed, "\.\" dropped, "\..\" takes the part before */
CHAR16 *PathCleanUpDirectories(CHAR16 *p) {
  CHAR16 *w = p;
  for (CHAR16 *r = p; *r; r++) *r = *r == '/' ? '\\' : *r;
  for (CHAR16 *r = p; *r; r++) {
    if (*r == '\\' && w > p && w[-1] == '\\') continue;
    *w++ = *r;
  }
  *w = 0;
  for (CHAR16 *d; (d = StrStr(p, L"\\.\\")) != NULL;) CopyMem(d, d + 2, StrSize(d + 2));
  for (CHAR16 *d; (d = StrStr(p, L"\\..\\")) != NULL;) {
    CHAR16 *b = d;
    while (b > p && b[-1] != '\\') b--;
    if (b > p) b--;
    CopyMem(b, d + 3, StrSize(d + 3));
  }
  return p;
}
VOID *AllocateCopyPool(UINTN n, CONST VOID *src) { VOID *p = malloc(n); if (p) memcpy(p, src, n); return p; }
VOID FreePool(VOID *p) { free(p); }
VOID *ZeroMem(VOID *p, UINTN n) { return memset(p, 0, n); }
VOID *CopyMem(VOID *d, CONST VOID *s, UINTN n) { return memmove(d, s, n); }

/* ---- main: JSON out ---------------------------------------------------------------- */
static void json16(CONST CHAR16 *s) {
  if (!s) { fputs("null", stdout); return; }
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') printf("\\%c", (char)*s);
    else if (*s < 0x20 || *s >= 0x7f) printf("\\u%04x", *s);
    else putchar((char)*s);
  }
  putchar('"');
}

int main(int argc, char **argv) {
  if (argc < 6) { fprintf(stderr, "usage: %s DIR FILES_PART LAUNCHER_PART CHAIN NAME...\n", argv[0]); return 2; }
  files_dir = argv[1];
  files_part = atoi(argv[2]);
  int launcher = atoi(argv[3]);
  UINT32 chain = (UINT32)atoi(argv[4]);
  nparts = argc - 5;
  if (nparts > MAX_PARTS || launcher < 1 || launcher > nparts) { fprintf(stderr, "bad partition numbers\n"); return 2; }
  for (int i = 0; i < nparts; i++) {
    parts[i].Type = PARTITION_TYPE_GPT;
    const char *nm = argv[5 + i];
    for (int k = 0; k < MAX_PARTITION_NAME_SIZE - 1 && nm[k]; k++) parts[i].Info.Gpt.PartitionName[k] = (unsigned char)nm[k];
  }
  EXTLINUX_BOOT_CONFIG c;
  EFI_HANDLE root = NULL;
  EFI_STATUS st = ProcessExtLinuxConfig(&part_handles[launcher - 1], chain, &c, &root);
  printf("{\"ok\":%s,\"partition\":%d", EFI_ERROR(st) ? "false" : "true", root ? part_of(root) : 0);
  if (!EFI_ERROR(st)) {
    printf(",\"timeout\":%u,\"title\":", c.Timeout);
    json16(c.MenuTitle);
    printf(",\"default\":%u,\"entries\":[", c.DefaultBootEntry);
    for (UINT32 i = 0; i < c.NumberOfBootOptions; i++) {
      EXTLINUX_BOOT_OPTION *o = &c.BootOptions[i];
      printf("%s{\"label\":", i ? "," : "");
      json16(o->Label);
      fputs(",\"menu\":", stdout); json16(o->MenuLabel);
      fputs(",\"linux\":", stdout); json16(o->LinuxPath);
      fputs(",\"initrd\":", stdout); json16(o->InitrdPath);
      fputs(",\"fdt\":", stdout); json16(o->DtbPath);
      fputs(",\"overlays\":", stdout); json16(o->Overlays);
      fputs(",\"append\":", stdout); json16(o->BootArgs);
      putchar('}');
    }
    putchar(']');
  }
  puts("}");
  return 0;
}
