/*
 * parley-healthcheck: the container health check of Parley's images.
 *
 * The runtime images are distroless (no shell, no curl), so `docker compose`
 * and `docker run` health checks call this instead. It sends
 * `GET <path>` to 127.0.0.1:<port> (a service's admin port) and exits 0 when
 * the answer is 2xx, 1 otherwise (refused, timed out, 503 while not ready).
 * Docker reserves every other exit code, so none is used.
 *
 *   parley-healthcheck PORT [PATH]      PATH defaults to /readyz
 *   parley-healthcheck 9093             chat replica ready?
 *   parley-healthcheck 9093 /healthz    chat process alive?
 *
 * Built statically (no libc needed at run time) in deploy/Dockerfile:
 *   cc -Os -static -s -o parley-healthcheck deploy/healthcheck.c
 * Kubernetes does not need it: the Helm chart probes with httpGet and grpc.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define TIMEOUT_SECONDS 3

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "parley-healthcheck: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        return fail("usage: parley-healthcheck PORT [PATH]", NULL);
    }
    char *end = NULL;
    long port = strtol(argv[1], &end, 10);
    if (end == argv[1] || *end != '\0' || port < 1 || port > 65535) {
        return fail("PORT must be a number from 1 to 65535", argv[1]);
    }
    const char *path = argc == 3 ? argv[2] : "/readyz";
    if (path[0] != '/' || strpbrk(path, " \r\n") != NULL || strlen(path) > 256) {
        return fail("PATH must start with / and hold no spaces", path);
    }

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return fail("socket", strerror(errno));
    }
    struct timeval timeout = {.tv_sec = TIMEOUT_SECONDS, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        return fail("connect to 127.0.0.1", strerror(errno));
    }

    char request[512];
    int length = snprintf(request, sizeof request,
                          "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%ld\r\n"
                          "User-Agent: parley-healthcheck\r\nConnection: close\r\n\r\n",
                          path, port);
    for (int sent = 0; sent < length;) {
        ssize_t n = write(fd, request + sent, (size_t)(length - sent));
        if (n <= 0) {
            return fail("write", n < 0 ? strerror(errno) : "connection closed");
        }
        sent += (int)n;
    }

    /* The status line is all we need: "HTTP/1.1 200 OK". */
    char answer[64];
    size_t have = 0;
    while (have < sizeof answer - 1) {
        ssize_t n = read(fd, answer + have, sizeof answer - 1 - have);
        if (n < 0) {
            return fail("read", strerror(errno));
        }
        if (n == 0) {
            break;
        }
        have += (size_t)n;
        answer[have] = '\0';
        if (strstr(answer, "\r\n") != NULL) {
            break;
        }
    }
    answer[have] = '\0';
    close(fd);

    int status = 0;
    if (sscanf(answer, "HTTP/%*d.%*d %3d", &status) != 1) {
        return fail("not an HTTP answer", NULL);
    }
    if (status < 200 || status > 299) {
        char code[16];
        snprintf(code, sizeof code, "%d", status);
        return fail(path, code);
    }
    return 0;
}
